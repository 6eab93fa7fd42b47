//! Camera pipelines: a gst-launch file, an inline gst-launch string, or a template from
//! `pipelines/` filled from the station config.
//!
//! A template is a pipeline file whose header declares its parameters and whose body uses them
//! as `{name}` placeholders:
//!
//! ```text
//! # An RTSP camera's H.264 stream.
//! # @param location                  the stream's URL (required)
//! # @param latency_ms = 200          jitter buffer
//! rtspsrc location="{location}" latency={latency_ms} ! ...
//! ```
//!
//! A parameter without `= default` is required. Filling checks the config against the
//! declaration before GStreamer sees anything: an unknown or missing parameter, or a value that
//! could change the pipeline's structure, is a clear error naming the parameter. Quoted
//! placeholders (`"{location}"`) take any text without `"`, `\` or control characters;
//! unquoted ones only a single token (no spaces, `!`, `,`, `=`, quotes or brackets), so a value
//! can never add elements or properties. Every placeholder must be declared and every declared
//! parameter used, so a template and its header cannot drift apart.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Why a pipeline could not be read or a template filled.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read pipeline {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("template {path}: {message}")]
    Template { path: PathBuf, message: String },
    #[error(
        "template {path}: unknown parameter `{name}`; it takes {}",
        .known.join(", ")
    )]
    Unknown {
        path: PathBuf,
        name: String,
        known: Vec<String>,
    },
    #[error("template {path}: parameter `{name}` is required ({doc})")]
    Missing {
        path: PathBuf,
        name: String,
        doc: String,
    },
    #[error("template {path}: parameter `{name}` = {value:?}: {why}")]
    BadValue {
        path: PathBuf,
        name: String,
        value: String,
        why: &'static str,
    },
}

/// One declared parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateParam {
    pub name: String,
    /// Absent: the parameter is required.
    pub default: Option<String>,
    /// What the header says of it.
    pub doc: String,
}

/// A pipeline file with its declared parameters.
#[derive(Debug, Clone)]
pub struct PipelineTemplate {
    pub path: PathBuf,
    pub params: Vec<TemplateParam>,
    /// The pipeline without comment lines: its text and its placeholders, in order.
    body: Vec<Segment>,
}

/// A piece of a template's pipeline.
#[derive(Debug, Clone)]
enum Segment {
    Text(String),
    /// `{name}`; `quoted` when it stands alone between double quotes (`"{location}"`).
    Placeholder {
        name: String,
        quoted: bool,
    },
}

/// Characters that end an unquoted token in gst-launch syntax.
const TOKEN_BREAKERS: &[char] = &['!', ',', '=', '"', '\'', '(', ')', '{', '}', '\\', ';'];

impl PipelineTemplate {
    /// Reads a pipeline file and its `# @param` header.
    pub fn load(path: &Path) -> Result<PipelineTemplate, TemplateError> {
        let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
            path: path.to_owned(),
            source,
        })?;
        PipelineTemplate::parse(path, &text)
    }

    /// Parses a pipeline file's text (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<PipelineTemplate, TemplateError> {
        let error = |message: String| TemplateError::Template {
            path: path.to_owned(),
            message,
        };
        let mut params: Vec<TemplateParam> = Vec::new();
        let (body, declarations) = split_comments(text);
        for (line, declaration) in declarations {
            let param = parse_param(declaration).map_err(|m| error(format!("{m}: {line}")))?;
            if params.iter().any(|p| p.name == param.name) {
                return Err(error(format!("parameter `{}` declared twice", param.name)));
            }
            params.push(param);
        }
        let body = segments(&body).map_err(error)?;
        let mut used: Vec<&str> = Vec::new();
        for segment in &body {
            if let Segment::Placeholder { name, .. } = segment
                && !used.contains(&name.as_str())
            {
                used.push(name);
            }
        }
        for &name in &used {
            if !params.iter().any(|p| p.name == name) {
                return Err(error(format!(
                    "placeholder {{{name}}} has no `# @param {name}` line"
                )));
            }
        }
        for param in &params {
            if !used.contains(&param.name.as_str()) {
                return Err(error(format!(
                    "parameter `{}` is declared but the pipeline never uses it",
                    param.name
                )));
            }
        }
        Ok(PipelineTemplate {
            path: path.to_owned(),
            params,
            body,
        })
    }

    /// The gst-launch description with every placeholder filled from `values` (defaults for
    /// the rest).
    pub fn fill(&self, values: &BTreeMap<String, ParamValue>) -> Result<String, TemplateError> {
        for name in values.keys() {
            if !self.params.iter().any(|p| &p.name == name) {
                return Err(TemplateError::Unknown {
                    path: self.path.clone(),
                    name: name.clone(),
                    known: self.params.iter().map(|p| p.name.clone()).collect(),
                });
            }
        }
        let mut filled = String::new();
        for segment in &self.body {
            let (name, quoted) = match segment {
                Segment::Text(text) => {
                    filled.push_str(text);
                    continue;
                }
                Segment::Placeholder { name, quoted } => (name, *quoted),
            };
            // `parse` has checked that every placeholder is declared.
            let Some(param) = self.params.iter().find(|p| &p.name == name) else {
                continue;
            };
            let value = match (values.get(name), &param.default) {
                (Some(value), _) => value.to_string(),
                (None, Some(default)) => default.clone(),
                (None, None) => {
                    return Err(TemplateError::Missing {
                        path: self.path.clone(),
                        name: name.clone(),
                        doc: param.doc.clone(),
                    });
                }
            };
            check_value(&value, quoted).map_err(|why| TemplateError::BadValue {
                path: self.path.clone(),
                name: name.clone(),
                value: value.clone(),
                why,
            })?;
            filled.push_str(&value);
        }
        Ok(filled)
    }
}

/// A pipeline file's gst-launch text (its non-comment lines joined by spaces) and its
/// `# @param` lines, each with what follows `@param`.
fn split_comments(text: &str) -> (String, Vec<(&str, &str)>) {
    let mut body = Vec::new();
    let mut declarations = Vec::new();
    for line in text.lines() {
        match line.trim_start().strip_prefix('#') {
            None => body.push(line),
            Some(comment) => {
                if let Some(declaration) = comment.trim_start().strip_prefix("@param") {
                    declarations.push((line, declaration));
                }
            }
        }
    }
    (body.join(" "), declarations)
}

/// `name`, `name = default`, each optionally followed by its description.
fn parse_param(declaration: &str) -> Result<TemplateParam, String> {
    let declaration = declaration.trim();
    let name_end = declaration
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(declaration.len());
    let name = &declaration[..name_end];
    if name.is_empty() {
        return Err("expected `# @param name [= default] [description]`".into());
    }
    let rest = declaration[name_end..].trim_start();
    let (default, doc) = match rest.strip_prefix('=') {
        Some(after) => {
            let after = after.trim_start();
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            if end == 0 {
                return Err(format!("parameter `{name}` has `=` but no default"));
            }
            (Some(after[..end].to_owned()), after[end..].trim())
        }
        None => (None, rest),
    };
    Ok(TemplateParam {
        name: name.to_owned(),
        default,
        doc: if doc.is_empty() {
            "no description".to_owned()
        } else {
            doc.to_owned()
        },
    })
}

/// A body cut into text and placeholders. Anything else in braces is gst-launch's own syntax
/// (a caps list: `{GRAY8, RGB}`) and stays text.
fn segments(body: &str) -> Result<Vec<Segment>, String> {
    let mut found = Vec::new();
    let mut text = String::new();
    let mut rest = body;
    while let Some(open) = rest.find('{') {
        let Some(len) = rest[open..].find('}') else {
            return Err("a `{` without its `}`".into());
        };
        let (close, name) = (open + len, &rest[open + 1..open + len]);
        if is_placeholder_name(name) {
            text.push_str(&rest[..open]);
            let quoted = rest[..open].ends_with('"') && rest[close + 1..].starts_with('"');
            found.push(Segment::Text(std::mem::take(&mut text)));
            found.push(Segment::Placeholder {
                name: name.to_owned(),
                quoted,
            });
        } else {
            text.push_str(&rest[..=close]);
        }
        rest = &rest[close + 1..];
    }
    text.push_str(rest);
    found.push(Segment::Text(text));
    Ok(found)
}

/// `{name}` is a placeholder when `name` is a lowercase identifier (`location`, `latency_ms`).
fn is_placeholder_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Whether a value may stand where its placeholder is.
fn check_value(value: &str, quoted: bool) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("expected a value, found an empty one");
    }
    if value.chars().any(char::is_control) {
        return Err("control characters are not allowed");
    }
    if quoted {
        if value.contains(['"', '\\']) {
            return Err("quotes and backslashes are not allowed");
        }
    } else if value.contains(char::is_whitespace) || value.contains(TOKEN_BREAKERS) {
        return Err("expected a single word: no spaces, quotes, brackets or `! , = ;`");
    }
    Ok(())
}

/// A parameter's value as the config gives it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Integer(i64),
    Float(f64),
    Bool(bool),
    Text(String),
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Integer(v) => write!(f, "{v}"),
            ParamValue::Float(v) => write!(f, "{v}"),
            ParamValue::Bool(v) => write!(f, "{v}"),
            ParamValue::Text(v) => f.write_str(v),
        }
    }
}

/// Where the camera pipeline comes from (`[camera]` in the station config: exactly one of
/// `pipeline`, `launch` and `template`).
#[derive(Debug, Clone, PartialEq)]
pub enum CameraPipeline {
    /// A gst-launch description in a file, `#` lines being comments.
    File(PathBuf),
    /// A gst-launch description given inline.
    Launch(String),
    /// A template filled from `[camera.params]`.
    Template {
        path: PathBuf,
        params: BTreeMap<String, ParamValue>,
    },
}

impl CameraPipeline {
    /// The gst-launch description to run.
    pub fn description(&self) -> Result<String, TemplateError> {
        match self {
            // A file's placeholders would reach GStreamer as text: a file is run as it is, so
            // one with declared parameters must be used as a template.
            CameraPipeline::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
                    path: path.clone(),
                    source,
                })?;
                let (body, declarations) = split_comments(&text);
                if !declarations.is_empty() {
                    return Err(TemplateError::Template {
                        path: path.clone(),
                        message: "it declares parameters (`# @param`): name it with \
                                  `template = ` and give them in [camera.params]"
                            .into(),
                    });
                }
                Ok(body)
            }
            CameraPipeline::Launch(description) => Ok(description.clone()),
            CameraPipeline::Template { path, params } => PipelineTemplate::load(path)?.fill(params),
        }
    }
}

impl fmt::Display for CameraPipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CameraPipeline::File(path) => write!(f, "{}", path.display()),
            CameraPipeline::Launch(description) => write!(f, "launch: {description}"),
            CameraPipeline::Template { path, params } => {
                write!(f, "{}", path.display())?;
                for (i, (name, value)) in params.iter().enumerate() {
                    let sep = if i == 0 { " with " } else { ", " };
                    write!(f, "{sep}{name} = {value}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTSP: &str = "# An RTSP camera.
# @param location                the stream's URL
# @param latency_ms = 200        jitter buffer, ms
# @param protocols = tcp
rtspsrc location=\"{location}\" latency={latency_ms} protocols={protocols}
  ! appsink name=frames";

    fn template(text: &str) -> Result<PipelineTemplate, TemplateError> {
        PipelineTemplate::parse(Path::new("t.gst"), text)
    }

    fn values(pairs: &[(&str, ParamValue)]) -> BTreeMap<String, ParamValue> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn text(v: &str) -> ParamValue {
        ParamValue::Text(v.to_owned())
    }

    #[test]
    fn a_template_is_filled_from_values_and_defaults() {
        let t = template(RTSP).expect("template");
        assert_eq!(t.params.len(), 3);
        assert_eq!(t.params[0].default, None);
        assert_eq!(t.params[1].default.as_deref(), Some("200"));
        assert_eq!(t.params[1].doc, "jitter buffer, ms");
        let filled = t
            .fill(&values(&[
                ("location", text("rtsp://10.0.0.5:554/main stream")),
                ("latency_ms", ParamValue::Integer(50)),
            ]))
            .expect("filled");
        assert_eq!(
            filled,
            "rtspsrc location=\"rtsp://10.0.0.5:554/main stream\" latency=50 protocols=tcp   \
             ! appsink name=frames"
        );
    }

    #[test]
    fn unknown_missing_and_structure_changing_values_are_refused_by_name() {
        let t = template(RTSP).expect("template");
        let err = t.fill(&values(&[])).unwrap_err().to_string();
        assert!(err.contains("`location` is required") && err.contains("the stream's URL"));
        let err = t
            .fill(&values(&[("location", text("x")), ("latncy", text("1"))]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown parameter `latncy`") && err.contains("latency_ms"));
        // A quoted value may not close its quotes; an unquoted one may not add elements.
        for (name, value) in [
            ("location", "x\" ! filesink location=/etc/passwd"),
            ("protocols", "tcp ! fakesink"),
            ("protocols", "tcp,udp"),
            ("latency_ms", ""),
        ] {
            let mut v = values(&[("location", text("rtsp://a/b"))]);
            v.insert(name.to_owned(), text(value));
            let err = t.fill(&v).unwrap_err();
            assert!(
                matches!(&err, TemplateError::BadValue { name: n, .. } if n == name),
                "{value:?}: {err}"
            );
        }
    }

    #[test]
    fn a_header_and_its_body_must_agree() {
        let err = template("# @param a\nvideotestsrc ! appsink name=frames")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`a` is declared but the pipeline never uses it"),
            "{err}"
        );
        let err = template("videotestsrc pattern={p} ! appsink name=frames")
            .unwrap_err()
            .to_string();
        assert!(err.contains("{p} has no `# @param p` line"), "{err}");
        let err = template("# @param a = \nx {a}").unwrap_err().to_string();
        assert!(err.contains("has `=` but no default"), "{err}");
        assert!(template("x {a").is_err());
        // Braces that are not a placeholder are gst-launch's (a caps list).
        let caps = "videotestsrc ! video/x-raw,format={ GRAY8, RGB } ! appsink name=frames";
        assert_eq!(
            template(caps)
                .expect("no placeholders")
                .fill(&values(&[]))
                .expect("as is"),
            caps
        );
    }

    #[test]
    fn a_plain_file_runs_as_it_is_and_a_template_file_needs_its_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = dir.path().join("plain.gst");
        std::fs::write(&plain, "# comment\nvideotestsrc\n  ! appsink name=frames\n").expect("w");
        assert_eq!(
            CameraPipeline::File(plain).description().expect("plain"),
            "videotestsrc   ! appsink name=frames"
        );
        let rtsp = dir.path().join("rtsp.gst");
        std::fs::write(&rtsp, RTSP).expect("w");
        let err = CameraPipeline::File(rtsp.clone())
            .description()
            .unwrap_err();
        assert!(
            err.to_string().contains("name it with `template = `"),
            "{err}"
        );
        let pipeline = CameraPipeline::Template {
            path: rtsp,
            params: values(&[("location", text("rtsp://cam/1"))]),
        };
        assert!(
            pipeline
                .description()
                .expect("filled")
                .contains("rtsp://cam/1")
        );
        assert!(
            pipeline
                .to_string()
                .ends_with("rtsp.gst with location = rtsp://cam/1")
        );
    }
}
