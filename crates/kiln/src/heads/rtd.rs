//! ELECTRA's replaced-token-detection head (`ElectraDiscriminatorPredictions`): a dense layer
//! (hidden → hidden), the config's `hidden_act`, and `dense_prediction` (hidden → 1): one logit
//! per token, positive for "this token was replaced by the generator".

use crate::engine::{Activation, Linear, LinearOut};
use crate::error::Result;

/// The discriminator head's weights.
#[derive(Clone, Debug)]
pub struct RtdHead {
    /// `discriminator_predictions.dense`, `[hidden, hidden]`.
    pub dense: Linear,
    /// The config's `hidden_act`.
    pub activation: Activation,
    /// `discriminator_predictions.dense_prediction`, `[1, hidden]`.
    pub prediction: Linear,
}

impl RtdHead {
    /// hidden: [n, hidden] -> one logit per row, [n].
    pub fn forward(&self, hidden: &[f32], n: usize) -> Result<Vec<f32>> {
        let mut u = vec![0.0; n * self.dense.out_features()];
        self.dense
            .forward_into(hidden, n, &mut u, LinearOut::WriteAct(self.activation))?;
        self.prediction.forward(&u, n)
    }
}
