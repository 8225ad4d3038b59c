//! A plain f32 tensor: a shape and a contiguous row-major buffer.

use crate::error::{Error, Result};

/// An owned f32 tensor, row-major and contiguous.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// Wraps `data` with `shape`; errors when the element counts differ.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::shape(
                "Tensor::new",
                format!(
                    "shape {shape:?} holds {n} values, buffer has {}",
                    data.len()
                ),
            ));
        }
        Ok(Tensor { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The values, mutable.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Consumes the tensor, returning its buffer.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Size of the last dimension (1 for a scalar).
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Number of rows when viewed as `[numel / cols, cols]`.
    pub fn rows(&self) -> usize {
        self.data.len().checked_div(self.cols()).unwrap_or(0)
    }

    /// Row `i` of the `[rows, cols]` view.
    pub fn row(&self, i: usize) -> &[f32] {
        let c = self.cols();
        &self.data[i * c..(i + 1) * c]
    }

    /// The transpose of a 2-D tensor (used only at load/save time for layout conversions).
    pub fn transpose2d(&self) -> Result<Tensor> {
        if self.shape.len() != 2 {
            return Err(Error::shape(
                "Tensor::transpose2d",
                format!("needs a 2-D tensor, got shape {:?}", self.shape),
            ));
        }
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut out = vec![0.0f32; r * c];
        for i in 0..r {
            for j in 0..c {
                out[j * r + i] = self.data[i * c + j];
            }
        }
        Tensor::new(vec![c, r], out)
    }

    /// Concatenates 2-D tensors with equal column counts along rows.
    pub fn concat_rows(parts: &[&Tensor]) -> Result<Tensor> {
        let cols = parts.first().map(|t| t.cols()).unwrap_or(0);
        let mut data = Vec::new();
        let mut rows = 0;
        for p in parts {
            if p.shape.len() != 2 || p.cols() != cols {
                return Err(Error::shape(
                    "Tensor::concat_rows",
                    format!("part of shape {:?} does not have {cols} columns", p.shape),
                ));
            }
            rows += p.shape[0];
            data.extend_from_slice(&p.data);
        }
        Tensor::new(vec![rows, cols], data)
    }

    /// Splits a 2-D tensor into row blocks of the given sizes.
    pub fn split_rows(&self, sizes: &[usize]) -> Result<Vec<Tensor>> {
        let cols = self.cols();
        if sizes.iter().sum::<usize>() != self.rows() {
            return Err(Error::shape(
                "Tensor::split_rows",
                format!("sizes {sizes:?} do not sum to {} rows", self.rows()),
            ));
        }
        let mut out = Vec::with_capacity(sizes.len());
        let mut start = 0;
        for &s in sizes {
            out.push(Tensor::new(
                vec![s, cols],
                self.data[start * cols..(start + s) * cols].to_vec(),
            )?);
            start += s;
        }
        Ok(out)
    }
}
