//! Reading a GGUF file: its metadata as typed values and its tensors as candle `QTensor`s.
//! Every failure names the file and what was wrong with it, so a truncated download or an
//! unsupported architecture is a clear error, not a panic deep inside a forward pass.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;

use crate::error::{Error, Result};

/// An opened GGUF file: the parsed header plus a reader for tensor data.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::model(&path, format!("cannot open: {e}")))?;
        let mut reader = BufReader::new(file);
        let content =
            Content::read(&mut reader).map_err(|e| Error::model(&path, format!("not a readable GGUF file: {e}")))?;
        // Check that every tensor lies inside the file, so a truncated file fails here.
        let len = std::fs::metadata(&path)?.len();
        for (name, info) in &content.tensor_infos {
            let elems: usize = info.shape.elem_count();
            let bytes = elems / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
            let end = content.tensor_data_offset + info.offset + bytes as u64;
            if end > len {
                return Err(Error::model(
                    &path,
                    format!("truncated: tensor {name} ends at byte {end} but the file has {len}"),
                ));
            }
        }
        Ok(Self { path, content, reader })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// The metadata as JSON (Ollama's `/api/show` `model_info`), sorted by key; arrays
    /// longer than `max_array` (the vocabulary, the merges) are null, as Ollama shows them.
    pub fn metadata_json(&self, max_array: usize) -> serde_json::Map<String, serde_json::Value> {
        fn json(v: &Value, max_array: usize) -> serde_json::Value {
            use serde_json::Value as J;
            match v {
                Value::U8(x) => J::from(*x),
                Value::I8(x) => J::from(*x),
                Value::U16(x) => J::from(*x),
                Value::I16(x) => J::from(*x),
                Value::U32(x) => J::from(*x),
                Value::I32(x) => J::from(*x),
                Value::U64(x) => J::from(*x),
                Value::I64(x) => J::from(*x),
                Value::F32(x) => J::from(*x),
                Value::F64(x) => J::from(*x),
                Value::Bool(x) => J::from(*x),
                Value::String(x) => J::from(x.as_str()),
                Value::Array(xs) if xs.len() > max_array => J::Null,
                Value::Array(xs) => J::Array(xs.iter().map(|x| json(x, max_array)).collect()),
            }
        }
        let mut keys: Vec<&String> = self.content.metadata.keys().collect();
        keys.sort();
        keys.into_iter().map(|k| (k.clone(), json(&self.content.metadata[k], max_array))).collect()
    }

    /// The number of weights in all tensors (the model's parameter count).
    pub fn parameter_count(&self) -> u64 {
        self.content.tensor_infos.values().map(|i| i.shape.elem_count() as u64).sum()
    }

    /// Every tensor's name, type and element count, from the header.
    pub fn tensor_summary(&self) -> Vec<(String, candle_core::quantized::GgmlDType, usize)> {
        let mut v: Vec<_> = self
            .content
            .tensor_infos
            .iter()
            .map(|(n, info)| (n.clone(), info.ggml_dtype, info.shape.elem_count()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// A tensor's dimensions, from the header (its data is not read).
    pub fn tensor_dims(&self, name: &str) -> Result<Vec<usize>> {
        self.content
            .tensor_infos
            .get(name)
            .map(|info| info.shape.dims().to_vec())
            .ok_or_else(|| Error::model(&self.path, format!("missing tensor {name}")))
    }

    pub fn tensor(&mut self, name: &str) -> Result<QTensor> {
        if !self.has_tensor(name) {
            return Err(Error::model(&self.path, format!("missing tensor {name}")));
        }
        self.content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| Error::model(&self.path, format!("tensor {name}: {e}")))
    }

    /// A 2-D weight tensor's bytes exactly as stored, for the engine's kernels.
    pub fn matrix(&mut self, name: &str) -> Result<crate::kernels::QMatrix> {
        use std::io::{Read, Seek, SeekFrom};
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| Error::model(&self.path, format!("missing tensor {name}")))?;
        let ty = crate::kernels::WeightType::from_ggml(info.ggml_dtype).ok_or_else(|| {
            Error::model(
                &self.path,
                format!("tensor {name} has type {:?}, which Nave cannot multiply", info.ggml_dtype),
            )
        })?;
        let (rows, cols) = match info.shape.dims() {
            [rows, cols] => (*rows, *cols),
            [cols] => (1, *cols),
            d => return Err(Error::model(&self.path, format!("tensor {name} has shape {d:?}, expected a matrix"))),
        };
        if !cols.is_multiple_of(ty.block_values()) {
            return Err(Error::model(&self.path, format!("tensor {name}: rows of {cols} are not whole blocks")));
        }
        let len = rows * ty.row_bytes(cols);
        let at = self.content.tensor_data_offset + info.offset;
        let mut data = vec![0u8; len];
        crate::kernels::huge_pages(&mut data);
        self.reader.seek(SeekFrom::Start(at))?;
        self.reader.read_exact(&mut data).map_err(|e| Error::model(&self.path, format!("tensor {name}: {e}")))?;
        crate::kernels::QMatrix::new(ty, rows, cols, data).map_err(|e| Error::model(&self.path, format!("{name}: {e}")))
    }

    fn get(&self, key: &str) -> Result<&Value> {
        self.content.metadata.get(key).ok_or_else(|| Error::model(&self.path, format!("missing metadata key {key}")))
    }

    pub fn string(&self, key: &str) -> Result<String> {
        self.get(key)?.to_string().cloned().map_err(|e| Error::model(&self.path, format!("{key}: {e}")))
    }

    pub fn opt_string(&self, key: &str) -> Option<String> {
        self.content.metadata.get(key).and_then(|v| v.to_string().ok().cloned())
    }

    pub fn u32(&self, key: &str) -> Result<u32> {
        value_u32(self.get(key)?).ok_or_else(|| Error::model(&self.path, format!("{key} is not an integer")))
    }

    pub fn opt_u32(&self, key: &str) -> Option<u32> {
        self.content.metadata.get(key).and_then(value_u32)
    }

    pub fn f32_or(&self, key: &str, default: f32) -> Result<f32> {
        match self.content.metadata.get(key) {
            None => Ok(default),
            Some(Value::F32(v)) => Ok(*v),
            Some(Value::F64(v)) => Ok(*v as f32),
            Some(v) => {
                value_u32(v).map(|v| v as f32).ok_or_else(|| Error::model(&self.path, format!("{key} is not a number")))
            }
        }
    }

    pub fn opt_bool(&self, key: &str) -> Option<bool> {
        self.content.metadata.get(key).and_then(|v| v.to_bool().ok())
    }

    pub fn strings(&self, key: &str) -> Result<Vec<String>> {
        let arr = self.get(key)?.to_vec().map_err(|e| Error::model(&self.path, format!("{key}: {e}")))?;
        arr.iter()
            .map(|v| v.to_string().cloned().map_err(|e| Error::model(&self.path, format!("{key}: {e}"))))
            .collect()
    }

    pub fn opt_f32s(&self, key: &str) -> Option<Vec<f32>> {
        let arr = self.content.metadata.get(key)?.to_vec().ok()?;
        arr.iter().map(|v| v.to_f32().ok()).collect()
    }

    pub fn opt_u32s(&self, key: &str) -> Option<Vec<u32>> {
        let arr = self.content.metadata.get(key)?.to_vec().ok()?;
        arr.iter().map(value_u32).collect()
    }
}

fn value_u32(v: &Value) -> Option<u32> {
    match v {
        Value::U8(v) => Some(*v as u32),
        Value::I8(v) => u32::try_from(*v).ok(),
        Value::U16(v) => Some(*v as u32),
        Value::I16(v) => u32::try_from(*v).ok(),
        Value::U32(v) => Some(*v),
        Value::I32(v) => u32::try_from(*v).ok(),
        Value::U64(v) => u32::try_from(*v).ok(),
        Value::I64(v) => u32::try_from(*v).ok(),
        _ => None,
    }
}
