//! One metric family's series with a cap: counter handles cached so that
//! counting an existing series costs two atomic loads and an atomic add, no
//! lock and no allocation.
//!
//! A series is identified by a `u64` key that the family computes from the
//! flow's fixed labels, plus (with contexts) the encoded context values.
//! Without contexts, keys below `dense_len` index a paged table of lazily
//! created handles; everything else goes through a hash map keyed by bytes,
//! looked up with a per-thread scratch buffer.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};

use prometheus::{IntCounter, IntCounterVec};

use super::context;

/// Handles per page of the dense table.
const PAGE: usize = 256;

type Page = Box<[OnceLock<IntCounter>]>;

pub(crate) struct Family {
    /// The Prometheus family name (the `family` label of the dropped counter).
    name: &'static str,
    help: &'static str,
    /// Label names in the vector's order.
    labels: Vec<&'static str>,
    /// Every series as `name{labels}` (labels sorted by name, escaped)
    /// with its counter, in creation order: /metrics writes these directly
    /// instead of going through the registry's gather, which copies and
    /// sorts every label of every series on each scrape.
    rendered: Mutex<Vec<(Box<str>, IntCounter)>>,
    vec: IntCounterVec,
    pages: Box<[OnceLock<Page>]>,
    dense_len: u64,
    keyed: RwLock<HashMap<Box<[u8]>, IntCounter>>,
    /// Serialises series creation so that the count never passes the limit.
    create: Mutex<()>,
    series: AtomicUsize,
    limit: usize,
    dropped: IntCounter,
}

thread_local! {
    /// Scratch space for keyed lookups: the key of the flow being counted.
    static KEY: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
}

impl Family {
    pub(crate) fn new(
        name: &'static str,
        help: &'static str,
        labels: Vec<&'static str>,
        vec: IntCounterVec,
        dense_len: u64,
        limit: usize,
        dropped: IntCounter,
    ) -> Self {
        let pages = (0..dense_len.div_ceil(PAGE as u64))
            .map(|_| OnceLock::new())
            .collect();
        Self {
            name,
            help,
            labels,
            rendered: Mutex::new(Vec::new()),
            vec,
            pages,
            dense_len,
            keyed: RwLock::new(HashMap::new()),
            create: Mutex::new(()),
            series: AtomicUsize::new(0),
            limit,
            dropped,
        }
    }

    /// Appends this family in the Prometheus text format (nothing when it has
    /// no series, as the registry's encoder does).
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let rendered = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
        if rendered.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} counter", self.name);
        for (series, counter) in rendered.iter() {
            out.push_str(series);
            out.push(' ');
            let _ = writeln!(out, "{}", counter.get());
        }
    }

    /// The number of series created so far.
    pub(crate) fn series(&self) -> usize {
        self.series.load(Ordering::Relaxed)
    }

    /// Counts one event in the series `key` (+ `ctx`, the encoded context
    /// values, empty without contexts). `fixed` pushes the family's own label
    /// values; it runs only when the series is created.
    #[inline]
    pub(crate) fn inc(&self, key: u64, ctx: &[u8], fixed: impl FnOnce(&mut Vec<String>)) {
        if ctx.is_empty() && key < self.dense_len {
            let page = &self.pages[(key / PAGE as u64) as usize];
            let slot_in_page = (key % PAGE as u64) as usize;
            if let Some(c) = page.get().and_then(|p| p[slot_in_page].get()) {
                c.inc();
                return;
            }
            self.create_dense(page, slot_in_page, fixed);
        } else {
            self.inc_keyed(key, ctx, fixed);
        }
    }

    #[cold]
    fn create_dense(
        &self,
        page: &OnceLock<Page>,
        slot: usize,
        fixed: impl FnOnce(&mut Vec<String>),
    ) {
        if self.full() {
            return;
        }
        let _guard = self.create.lock().unwrap_or_else(|e| e.into_inner());
        let page = page.get_or_init(|| (0..PAGE).map(|_| OnceLock::new()).collect());
        if let Some(c) = page[slot].get() {
            c.inc();
            return;
        }
        if self.full() {
            return;
        }
        let counter = self.make(fixed, &[]);
        counter.inc();
        let _ = page[slot].set(counter);
    }

    fn inc_keyed(&self, key: u64, ctx: &[u8], fixed: impl FnOnce(&mut Vec<String>)) {
        KEY.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            buf.extend_from_slice(&key.to_le_bytes());
            buf.extend_from_slice(ctx);
            {
                let map = self.keyed.read().unwrap_or_else(|e| e.into_inner());
                if let Some(c) = map.get(buf.as_slice()) {
                    c.inc();
                    return;
                }
            }
            self.create_keyed(&buf, ctx, fixed);
        });
    }

    #[cold]
    fn create_keyed(&self, full_key: &[u8], ctx: &[u8], fixed: impl FnOnce(&mut Vec<String>)) {
        if self.full() {
            return;
        }
        let _guard = self.create.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = self.keyed.write().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(full_key) {
            c.inc();
            return;
        }
        if self.full() {
            return;
        }
        let counter = self.make(fixed, ctx);
        counter.inc();
        map.insert(full_key.into(), counter);
    }

    /// Whether the cap is reached; if so the event is counted as dropped.
    fn full(&self) -> bool {
        if self.series.load(Ordering::Relaxed) >= self.limit {
            self.dropped.inc();
            return true;
        }
        false
    }

    /// Creates the series' counter (called under `create`).
    fn make(&self, fixed: impl FnOnce(&mut Vec<String>), ctx: &[u8]) -> IntCounter {
        let mut values = Vec::with_capacity(8);
        fixed(&mut values);
        values.extend(context::decode(ctx));
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        self.series.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(family = self.name, labels = ?refs, "new series");
        let counter = self.vec.with_label_values(&refs);
        let line = series_line(self.name, &self.labels, &refs);
        self.rendered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((line.into_boxed_str(), counter.clone()));
        counter
    }
}

/// `name{a="1",b="2"}` with labels sorted by name and values escaped as the
/// text format requires (backslash, double quote, newline).
fn series_line(name: &str, labels: &[&str], values: &[&str]) -> String {
    let mut pairs: Vec<(&str, &str)> = labels.iter().copied().zip(values.iter().copied()).collect();
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = String::with_capacity(name.len() + 16 * pairs.len());
    out.push_str(name);
    if !pairs.is_empty() {
        out.push('{');
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
    out
}

fn escape_help(h: &str) -> String {
    h.replace('\\', "\\\\").replace('\n', "\\n")
}
