//! Reading tensors from `model.safetensors` or a sharded `model.safetensors.index.json`,
//! memory-mapped; F32, F16 and BF16 stored weights are converted to f32 on read.

use crate::engine::Tensor;
use crate::error::{Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorInfo};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// All tensors of a checkpoint, possibly spread over several files.
pub struct WeightStore {
    files: Vec<(PathBuf, memmap2::Mmap, usize)>,
    index: HashMap<String, (usize, TensorInfo)>,
}

impl WeightStore {
    /// Opens the weights of a model directory: `model.safetensors`, else the shards listed by
    /// `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.is_file() {
            Self::open_files(&[single])
        } else if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io("read", &index, e))?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
                path: index.clone(),
                msg: e.to_string(),
            })?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Json {
                    path: index.clone(),
                    msg: "missing object field `weight_map` (tensor name -> shard file)".into(),
                })?;
            let mut shards: Vec<String> = Vec::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| Error::Json {
                    path: index.clone(),
                    msg: format!("weight_map entry `{name}` is not a file name"),
                })?;
                if !shards.iter().any(|s| s == file) {
                    shards.push(file.to_string());
                }
            }
            shards.sort();
            let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
            Self::open_files(&paths)
        } else {
            Err(Error::MissingFile {
                path: single,
                hint: "expected model.safetensors or model.safetensors.index.json (PyTorch .bin files are not read; convert them with transformers' save_pretrained(safe_serialization=True))".into(),
            })
        }
    }

    /// Opens the given safetensors files.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (fi, path) in paths.iter().enumerate() {
            let f = std::fs::File::open(path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::MissingFile {
                        path: path.clone(),
                        hint: "the checkpoint refers to this weights file but it is not there"
                            .into(),
                    }
                } else {
                    Error::io("open", path, e)
                }
            })?;
            // SAFETY: the file is opened read-only; Kiln never writes to a file it has mapped
            // (saves go to a temporary file that is renamed into place).
            let mmap = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io("mmap", path, e))?;
            let (n, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| Error::Safetensors {
                path: path.clone(),
                msg: format!("{e} (the file is truncated or not a safetensors file)"),
            })?;
            for (name, info) in meta.tensors() {
                index.insert(name, (fi, info.clone()));
            }
            files.push((path.clone(), mmap, 8 + n));
        }
        Ok(WeightStore { files, index })
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.index.keys().cloned().collect();
        v.sort();
        v
    }

    /// The file holding `name` (or the first file).
    pub fn path_of(&self, name: &str) -> &Path {
        let fi = self.index.get(name).map_or(0, |(f, _)| *f);
        self.files.get(fi).map_or(Path::new(""), |f| f.0.as_path())
    }

    /// The stored shape of a tensor.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.index.get(name).map(|(_, i)| i.shape.as_slice())
    }

    /// Whether a tensor is stored as int8.
    pub fn is_i8(&self, name: &str) -> bool {
        self.index
            .get(name)
            .is_some_and(|(_, i)| i.dtype == Dtype::I8)
    }

    /// Reads an int8 tensor (a quantized weight), checking its shape.
    pub fn get_i8(&self, name: &str, shape: &[usize]) -> Result<Vec<i8>> {
        let (fi, info) = self.index.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.path_of(name).to_path_buf(),
            name: name.into(),
            tried: name.into(),
            arch: "the expected".into(),
        })?;
        let (path, mmap, base) = &self.files[*fi];
        if info.dtype != Dtype::I8 {
            return Err(Error::TensorDtype {
                path: path.clone(),
                name: name.into(),
                dtype: format!("{:?} (an int8 weight was expected)", info.dtype),
            });
        }
        if info.shape != shape {
            return Err(Error::TensorShape {
                path: path.clone(),
                name: name.into(),
                found: info.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        let bytes = &mmap[base + info.data_offsets.0..base + info.data_offsets.1];
        Ok(bytes.iter().map(|&b| b as i8).collect())
    }

    /// Reads a tensor as f32.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let (fi, info) = self.index.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.path_of(name).to_path_buf(),
            name: name.into(),
            tried: name.into(),
            arch: "the expected".into(),
        })?;
        let (path, mmap, base) = &self.files[*fi];
        let bytes = &mmap[base + info.data_offsets.0..base + info.data_offsets.1];
        let data: Vec<f32> = match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::TensorDtype {
                    path: path.clone(),
                    name: name.into(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        // Checked once here, so a corrupt file is named at load instead of turning every
        // output into NaN.
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::Safetensors {
                path: path.clone(),
                msg: format!(
                    "tensor `{name}` holds a non-finite value ({}) at flat index {i} of shape {:?}; the weights are corrupt",
                    data[i], info.shape
                ),
            });
        }
        Tensor::new(info.shape.clone(), data).map_err(|_| Error::Safetensors {
            path: path.clone(),
            msg: format!(
                "tensor `{name}`: data size does not match shape {:?}",
                info.shape
            ),
        })
    }
}

/// The dtype a checkpoint is saved in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveDtype {
    /// 32-bit float (exact).
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
}

/// An int8 tensor to save: its shape and values.
pub type I8Tensor = (Vec<usize>, Vec<i8>);

/// Writes named tensors to a safetensors file atomically (temporary file, then rename).
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    dtype: SaveDtype,
) -> Result<()> {
    write_safetensors_with_i8(path, tensors, dtype, &BTreeMap::new())
}

/// [`write_safetensors`] plus int8 tensors (quantized weights), stored as I8.
pub fn write_safetensors_with_i8(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    dtype: SaveDtype,
    int8: &BTreeMap<String, I8Tensor>,
) -> Result<()> {
    let mut raw: Vec<(String, Vec<u8>, Vec<usize>, Dtype)> =
        Vec::with_capacity(tensors.len() + int8.len());
    for (name, t) in tensors {
        let bytes: Vec<u8> = match dtype {
            SaveDtype::F32 => t.data().iter().flat_map(|v| v.to_le_bytes()).collect(),
            SaveDtype::F16 => t
                .data()
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            SaveDtype::BF16 => t
                .data()
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        };
        let st_dtype = match dtype {
            SaveDtype::F32 => Dtype::F32,
            SaveDtype::F16 => Dtype::F16,
            SaveDtype::BF16 => Dtype::BF16,
        };
        raw.push((name.clone(), bytes, t.shape().to_vec(), st_dtype));
    }
    for (name, (shape, values)) in int8 {
        let bytes = values.iter().map(|&v| v as u8).collect();
        raw.push((name.clone(), bytes, shape.clone(), Dtype::I8));
    }
    let mut views = Vec::with_capacity(raw.len());
    for (name, bytes, shape, st_dtype) in &raw {
        let v =
            safetensors::tensor::TensorView::new(*st_dtype, shape.clone(), bytes).map_err(|e| {
                Error::Safetensors {
                    path: path.to_path_buf(),
                    msg: format!("tensor `{name}`: {e}"),
                }
            })?;
        views.push((name.as_str(), v));
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let bytes =
        safetensors::tensor::serialize(views, Some(meta)).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            msg: format!("{e}"),
        })?;
    super::atomic_write(path, &bytes)
}
