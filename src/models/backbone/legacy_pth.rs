//! Reader for PyTorch's legacy (pre-1.6, non-zip) `.pth` format.
//!
//! candle reads only the zip format. The legacy file is a sequence of pickles followed by raw
//! storage bytes:
//!
//! 1. the magic number `0x1950a86a20f9469cfc6c` (a 10-byte pickled long),
//! 2. the protocol version (1001),
//! 3. system info (endianness, type sizes),
//! 4. the object itself — here a state dict whose tensors point at storages by persistent id
//!    `('storage', <type>, key, location, size, …)`,
//! 5. the list of storage keys, in the order their bytes follow,
//!
//! then, for each key in that order, an 8-byte little-endian element count and the elements.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

/// `torch.serialization.MAGIC_NUMBER`, as a pickled 10-byte long.
const MAGIC_PICKLE: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.',
];

/// The protocol version legacy files carry.
const PROTOCOL_VERSION: i64 = 1001;

/// Why a legacy `.pth` file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PthError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a legacy PyTorch file (bad magic number)")]
    Magic { path: PathBuf },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Pickle {
        path: PathBuf,
        source: candle_core::Error,
    },
}

/// Where a tensor's values sit in a storage.
struct TensorRef {
    name: String,
    storage_key: String,
    dtype: DType,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// Reads every float tensor of a legacy `.pth` state dict (integer buffers such as
/// `num_batches_tracked` are skipped), in file order.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>, PthError> {
    let io = |source| PthError::Io {
        path: path.to_owned(),
        source,
    };
    let format = |message: String| PthError::Format {
        path: path.to_owned(),
        message,
    };
    let pickle = |source| PthError::Pickle {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut reader = BufReader::new(file);

    // The magic number's long overflows candle's pickle integers, so it is matched as bytes.
    let mut magic = [0u8; MAGIC_PICKLE.len()];
    reader.read_exact(&mut magic).map_err(io)?;
    if magic != MAGIC_PICKLE {
        return Err(PthError::Magic {
            path: path.to_owned(),
        });
    }
    let protocol = read_pickle(&mut reader).map_err(pickle)?;
    if protocol.clone().int_or_long().ok() != Some(PROTOCOL_VERSION) {
        return Err(format(format!(
            "protocol version {protocol:?}, expected {PROTOCOL_VERSION}"
        )));
    }
    let _system_info = read_pickle(&mut reader).map_err(pickle)?;
    let state_dict = read_pickle(&mut reader).map_err(pickle)?;
    let keys = match read_pickle(&mut reader).map_err(pickle)? {
        Object::List(keys) => keys
            .into_iter()
            .map(|k| {
                k.unicode()
                    .map_err(|o| format(format!("storage key {o:?}")))
            })
            .collect::<Result<Vec<String>, _>>()?,
        other => {
            return Err(format(format!(
                "expected the storage key list, got {other:?}"
            )));
        }
    };

    let entries = match state_dict {
        Object::Dict(entries) => entries,
        other => {
            return Err(format(format!(
                "expected a state dict, got {:?}",
                short(&other)
            )));
        }
    };
    let mut tensors = Vec::new();
    for (name, value) in entries {
        let Ok(name) = name.unicode() else { continue };
        if let Some(tensor) = tensor_ref(name, value).map_err(&format)? {
            tensors.push(tensor);
        }
    }

    // Storages follow in key order: element count, then the elements.
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let wanted: HashMap<&str, DType> = tensors
        .iter()
        .map(|t| (t.storage_key.as_str(), t.dtype))
        .collect();
    for key in &keys {
        let mut count = [0u8; 8];
        reader.read_exact(&mut count).map_err(io)?;
        let elem_size = match wanted.get(key.as_str()) {
            Some(dtype) => dtype.size_in_bytes(),
            // Integer buffers we skip are int64.
            None => 8,
        };
        // The count comes from the file: check it against what the file can hold before
        // allocating.
        let len = usize::try_from(u64::from_le_bytes(count))
            .ok()
            .and_then(|count| count.checked_mul(elem_size))
            .filter(|len| *len as u64 <= file_len)
            .ok_or_else(|| {
                format(format!(
                    "storage {key}: element count runs past the end of the file"
                ))
            })?;
        let mut bytes = vec![0u8; len];
        reader.read_exact(&mut bytes).map_err(io)?;
        storages.insert(key.clone(), bytes);
    }

    tensors
        .into_iter()
        .map(|t| {
            let bytes = storages
                .get(&t.storage_key)
                .ok_or_else(|| format(format!("{}: storage {} missing", t.name, t.storage_key)))?;
            let tensor = materialise(&t, bytes).map_err(|e| format(format!("{}: {e}", t.name)))?;
            Ok((t.name, tensor))
        })
        .collect()
}

fn read_pickle<R: BufRead>(reader: &mut R) -> candle_core::Result<Object> {
    let mut stack = Stack::empty();
    stack.read_loop(reader)?;
    stack.finalize()
}

/// Decodes `_rebuild_tensor_v2(storage, offset, size, stride, …)`; `None` for other values and
/// for non-float storages.
fn tensor_ref(name: String, value: Object) -> Result<Option<TensorRef>, String> {
    let Ok((callable, args)) = value.reduce() else {
        return Ok(None);
    };
    match callable.class() {
        Ok((module, class)) if module == "torch._utils" && class == "_rebuild_tensor_v2" => {}
        _ => return Ok(None),
    }
    let mut args = args
        .tuple()
        .map_err(|o| format!("{name}: tensor args {o:?}"))?;
    if args.len() < 4 {
        return Err(format!(
            "{name}: expected at least 4 tensor args, got {}",
            args.len()
        ));
    }
    let usizes = |o: Object| -> Result<Vec<usize>, String> {
        o.tuple()
            .map_err(|o| format!("{name}: {o:?}"))?
            .into_iter()
            .map(|v| {
                v.int_or_long()
                    .map_err(|o| format!("{name}: {o:?}"))
                    .and_then(|v| usize::try_from(v).map_err(|e| e.to_string()))
            })
            .collect()
    };
    let stride = usizes(args.remove(3))?;
    let shape = usizes(args.remove(2))?;
    let offset = args
        .remove(1)
        .int_or_long()
        .map_err(|o| format!("{name}: offset {o:?}"))
        .and_then(|v| usize::try_from(v).map_err(|_| format!("{name}: negative offset {v}")))?;
    let storage = args
        .remove(0)
        .persistent_load()
        .and_then(Object::tuple)
        .map_err(|o| format!("{name}: storage {o:?}"))?;
    let [_tag, storage_type, key, ..] = storage.as_slice() else {
        return Err(format!("{name}: short storage id"));
    };
    let dtype = match storage_type.clone().class() {
        Ok((_, class)) if class == "FloatStorage" => DType::F32,
        Ok((_, class)) if class == "LongStorage" => return Ok(None),
        other => return Err(format!("{name}: unsupported storage {other:?}")),
    };
    let storage_key = key
        .clone()
        .unicode()
        .map_err(|o| format!("{name}: key {o:?}"))?;
    Ok(Some(TensorRef {
        name,
        storage_key,
        dtype,
        offset,
        shape,
        stride,
    }))
}

/// Copies a (possibly strided) view out of a storage into a contiguous tensor.
fn materialise(t: &TensorRef, bytes: &[u8]) -> Result<Tensor, String> {
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let n: usize = t.shape.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut index = vec![0usize; t.shape.len()];
    for _ in 0..n {
        let at = t.offset
            + index
                .iter()
                .zip(&t.stride)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        out.push(*values.get(at).ok_or("view runs past its storage")?);
        // Row-major increment of the multi-index.
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < t.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Tensor::from_vec(out, t.shape.as_slice(), &Device::Cpu).map_err(|e| e.to_string())
}

fn short(object: &Object) -> String {
    let text = format!("{object:?}");
    text.chars().take(80).collect()
}
