//! A record as text: KumoMTA's JSON, or a `per_record` MiniJinja template with
//! the record's fields (and the whole record as `log_record`) in scope.

use crate::LogError;
use egress_record::{LogRecord, PerRecord, RecordType};
use std::collections::BTreeMap;

/// The templates of one logger, compiled when it starts (a template that does not
/// parse fails the policy's load, not a record).
pub struct Renderer {
    env: minijinja::Environment<'static>,
    /// Types whose records are templated (`Any` stands for the types not named).
    templated: Vec<RecordType>,
    named: Vec<RecordType>,
}

impl Renderer {
    /// Compiles the templates of `per_record`; `what` names the logger in errors.
    pub fn new(
        per_record: &BTreeMap<RecordType, PerRecord>,
        what: &str,
    ) -> Result<Renderer, LogError> {
        let mut env = minijinja::Environment::new();
        let mut templated = Vec::new();
        for (kind, params) in per_record {
            if let Some(source) = &params.template {
                env.add_template_owned(kind.name().to_owned(), source.clone())
                    .map_err(|e| LogError::Template {
                        logger: what.to_owned(),
                        kind: kind.name(),
                        problem: e.to_string(),
                    })?;
                templated.push(*kind);
            }
        }
        Ok(Renderer {
            env,
            templated,
            named: per_record.keys().copied().collect(),
        })
    }

    /// The template for `kind`: its own, else `Any`'s when `kind` is not named.
    fn template_for(&self, kind: RecordType) -> Option<RecordType> {
        if self.named.contains(&kind) {
            self.templated.contains(&kind).then_some(kind)
        } else {
            self.templated
                .contains(&RecordType::Any)
                .then_some(RecordType::Any)
        }
    }

    /// The record's text, ending in a newline.
    #[cfg(test)]
    pub fn render(&self, record: &LogRecord) -> Result<Vec<u8>, String> {
        let mut text = Vec::new();
        self.render_into(record, &mut text)?;
        Ok(text)
    }

    /// [`render`](Self::render), appended to `text` (a buffer the caller reuses).
    pub fn render_into(&self, record: &LogRecord, text: &mut Vec<u8>) -> Result<(), String> {
        match self.template_for(record.kind) {
            None => record.write_json(text),
            Some(kind) => {
                let template = self
                    .env
                    .get_template(kind.name())
                    .map_err(|e| e.to_string())?;
                let fields = serde_json::to_value(record).map_err(|e| e.to_string())?;
                let mut scope = match &fields {
                    serde_json::Value::Object(map) => map.clone(),
                    _ => serde_json::Map::new(),
                };
                scope.insert("log_record".into(), fields);
                let rendered = template
                    .render(minijinja::Value::from_serialize(&scope))
                    .map_err(|e| format!("template for {}: {e}", kind.name()))?;
                text.extend_from_slice(rendered.as_bytes());
            }
        }
        if text.last() != Some(&b'\n') {
            text.push(b'\n');
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_record::Response;

    fn params(template: &str) -> PerRecord {
        PerRecord {
            suffix: None,
            log_dir: None,
            enable: true,
            template: Some(template.into()),
            segment_header: String::new(),
        }
    }

    #[test]
    fn kumomta_template_example_and_log_record() {
        let mut per = BTreeMap::new();
        per.insert(
            RecordType::Bounce,
            params("Bounce! id={{ id }}, from={{ sender }} code={{ response.code }} age={{ timestamp - created }}"),
        );
        per.insert(RecordType::Any, params("{{ log_record | tojson }}"));
        let r = Renderer::new(&per, "local log /x").unwrap();
        let mut rec = LogRecord::new(RecordType::Bounce, "abc", "s@x.example");
        rec.response = Response::new(550, None, "no", Some("."));
        assert_eq!(
            String::from_utf8(r.render(&rec).unwrap()).unwrap(),
            "Bounce! id=abc, from=s@x.example code=550 age=0\n"
        );
        let delivery = LogRecord::new(RecordType::Delivery, "d", "s@x.example");
        let v: serde_json::Value = serde_json::from_slice(&r.render(&delivery).unwrap()).unwrap();
        assert_eq!(v["type"], "Delivery");
    }

    #[test]
    fn a_bad_template_names_the_type() {
        let mut per = BTreeMap::new();
        per.insert(RecordType::Delivery, params("{{ id "));
        let err = Renderer::new(&per, "local log /x")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("Delivery") && err.contains("/x"), "{err}");
    }
}
