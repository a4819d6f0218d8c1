//! What every logger does to a record before it is written or sent, in one
//! place: enabled for its type? the filter's word; the headers and meta it asks
//! for; its text.

use crate::render::Renderer;
use crate::{capture, Event, LogError, RecordFilter};
use egress_record::{LogRecord, PerRecord, RecordType};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The filter and the runtime its calls run on.
pub(crate) type Filter = Option<(Arc<dyn RecordFilter>, tokio::runtime::Handle)>;

/// One logger's view of records.
pub(crate) struct Preparer {
    filter: Filter,
    /// The event to ask, and the hook name passed with it.
    event: Option<(String, Option<String>)>,
    headers: Vec<String>,
    meta: Vec<String>,
    per_record: BTreeMap<RecordType, PerRecord>,
    renderer: Renderer,
}

impl Preparer {
    pub fn new(
        what: &str,
        filter: Filter,
        event: Option<(String, Option<String>)>,
        headers: &[String],
        meta: &[String],
        per_record: &BTreeMap<RecordType, PerRecord>,
    ) -> Result<Preparer, LogError> {
        // An event nothing answers is not asked (a Lua call per record saved).
        let event = match &filter {
            Some((f, _)) => event.filter(|(name, _)| f.handles(name)),
            None => None,
        };
        Ok(Preparer {
            renderer: Renderer::new(per_record, what)?,
            filter,
            event,
            headers: headers.to_vec(),
            meta: meta.to_vec(),
            per_record: per_record.clone(),
        })
    }

    /// The settings for records of `kind`.
    pub fn per_record(&self, kind: RecordType) -> Option<&PerRecord> {
        self.per_record
            .get(&kind)
            .or_else(|| self.per_record.get(&RecordType::Any))
    }

    /// The record's text for this logger, or `None` when it is left out.
    pub fn prepare(&self, event: &Event) -> Option<Result<Vec<u8>, String>> {
        let mut text = Vec::new();
        self.prepare_into(event, &mut text)
            .map(|done| done.map(|()| text))
    }

    /// [`prepare`](Self::prepare), the text appended to `text` (a buffer the
    /// caller reuses); `None` when the record is left out.
    pub fn prepare_into(&self, event: &Event, text: &mut Vec<u8>) -> Option<Result<(), String>> {
        if !self.per_record(event.record.kind).is_none_or(|p| p.enable) {
            return None;
        }
        if let (Some((filter, runtime)), Some((name, hook))) = (&self.filter, &self.event) {
            // On the logger's own thread, never a runtime worker: blocking here
            // is what the thread is for.
            let keep = filter.keep(name, hook.as_deref(), &event.record, &event.message);
            if !runtime.block_on(keep) {
                return None;
            }
        }
        let record: std::borrow::Cow<'_, LogRecord> =
            if self.headers.is_empty() && self.meta.is_empty() {
                std::borrow::Cow::Borrowed(&event.record)
            } else {
                let mut r = event.record.clone();
                if let Some(head) = &event.message.head {
                    r.headers = capture::headers(head, &self.headers);
                }
                r.meta = capture::meta(&event.message.meta, &self.meta);
                std::borrow::Cow::Owned(r)
            };
        Some(self.renderer.render_into(&record, text))
    }
}
