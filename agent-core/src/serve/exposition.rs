//! The Prometheus text format (0.0.4), written straight into one buffer, for the families with a
//! series per target or port: a scrape at 10,000 series must not build an object per series and
//! label (the `prometheus` crate's model, built per scrape, renders them about ten times slower:
//! BENCHMARKS.md, "Render stage"), so label values are escaped as they are copied and numbers
//! are formatted in place. The agent's own families go through the crate's registry
//! ([`crate::serve::agent`]) and are appended after these.
use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
};

use crate::{
    analyse::histogram::Histogram,
    collect::{labels::escape, workload::Workload},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// An exposition being written. A family that gets no sample is taken back out: the format has
/// no empty families.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
    /// Where the open family's header starts, and whether a sample followed it.
    family: Option<(usize, bool)>,
}

impl Text {
    /// Writes into `buffer`, after what it holds.
    pub fn new(buffer: String) -> Self {
        Text {
            out: buffer,
            family: None,
        }
    }

    /// Starts family `name`; its samples follow.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) {
        self.close();
        self.family = Some((self.out.len(), false));
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape(&mut self.out, help, false);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind.name());
        self.out.push('\n');
    }

    /// Starts a sample of the open family (`name` carries a histogram's `_bucket`, `_sum`…).
    pub fn sample(&mut self, name: &str) -> Sample<'_> {
        if let Some((_, sampled)) = &mut self.family {
            *sampled = true;
        }
        self.out.push_str(name);
        Sample {
            out: &mut self.out,
            labels: 0,
        }
    }

    fn close(&mut self) {
        if let Some((start, false)) = self.family.take() {
            self.out.truncate(start);
        }
    }

    pub fn finish(mut self) -> String {
        self.close();
        self.out
    }
}

/// One sample line: labels, then the value, which ends the line.
pub struct Sample<'a> {
    out: &'a mut String,
    labels: usize,
}

impl<'a> Sample<'a> {
    /// Label pairs written into `out` to be reused by [`Sample::cached`] (a table row's text);
    /// never given a value.
    pub fn labels(out: &'a mut String) -> Self {
        Sample { out, labels: 0 }
    }

    /// Label pairs written before by [`Sample::labels`].
    pub fn cached(mut self, text: &str) -> Self {
        // Empty: no labels were written.
        let Some(pairs) = text.strip_prefix('{') else {
            return self;
        };
        self.out.push(if self.labels == 0 { '{' } else { ',' });
        self.out.push_str(pairs);
        self.labels += 1;
        self
    }

    fn name(&mut self, name: &str) {
        self.out.push(if self.labels == 0 { '{' } else { ',' });
        self.labels += 1;
        self.out.push_str(name);
        self.out.push_str("=\"");
    }

    /// A workload's labels (`workload`, `namespace`, `pod`, `container`), escaped once when it
    /// was resolved.
    pub fn workload(mut self, w: &Workload) -> Self {
        self.out.push(if self.labels == 0 { '{' } else { ',' });
        self.out.push_str(w.label_text());
        self.labels += Workload::LABELS;
        self
    }

    /// A label whose value is arbitrary text (escaped).
    pub fn label(mut self, name: &str, value: &str) -> Self {
        self.name(name);
        escape(self.out, value, true);
        self.out.push('"');
        self
    }

    /// A label whose value prints without characters to escape: numbers, addresses.
    pub fn plain(mut self, name: &str, value: impl Plain) -> Self {
        self.name(name);
        value.write(self.out);
        self.out.push('"');
        self
    }

    /// [`Sample::plain`], or `other` for a value folded away by the series cap.
    pub fn or_other(self, name: &str, value: Option<impl Plain>) -> Self {
        match value {
            Some(v) => self.plain(name, v),
            None => self.label(name, crate::serve::series::OTHER),
        }
    }

    fn end(&mut self) {
        if self.labels > 0 {
            self.out.push('}');
        }
        self.out.push(' ');
    }

    /// An integer value: exact past 2^53, where a float would round.
    pub fn count(mut self, v: u64) {
        self.end();
        v.write(self.out);
        self.out.push('\n');
    }

    pub fn value(mut self, v: f64) {
        self.end();
        float(self.out, v);
        self.out.push('\n');
    }
}

/// Writes the `_bucket`, `_sum` and `_count` samples of histogram family `name` from `h`, each
/// starting with `labels`.
pub fn histogram(out: &mut Text, name: &str, h: &Histogram, labels: impl for<'s> Fn(Sample<'s>) -> Sample<'s>) {
    let bucket = format!("{name}_bucket");
    for (le, n) in h.buckets() {
        labels(out.sample(&bucket)).plain("le", le).count(n);
    }
    labels(out.sample(&bucket)).label("le", "+Inf").count(h.count());
    labels(out.sample(&format!("{name}_sum"))).value(h.sum());
    labels(out.sample(&format!("{name}_count"))).count(h.count());
}

/// A value whose text needs no escaping, written without `fmt`'s machinery: at 10,000 series
/// that machinery cost more than the digits themselves.
pub trait Plain {
    fn write(&self, out: &mut String);
}

impl Plain for u64 {
    fn write(&self, out: &mut String) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = *self;
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        out.push_str(std::str::from_utf8(&digits[i..]).unwrap_or_default());
    }
}

impl Plain for u16 {
    fn write(&self, out: &mut String) {
        u64::from(*self).write(out);
    }
}

impl Plain for Ipv4Addr {
    fn write(&self, out: &mut String) {
        for (i, octet) in self.octets().into_iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            u64::from(octet).write(out);
        }
    }
}

impl Plain for IpAddr {
    fn write(&self, out: &mut String) {
        match self {
            IpAddr::V4(v4) => v4.write(out),
            IpAddr::V6(v6) => {
                let _ = write!(out, "{v6}");
            }
        }
    }
}

impl Plain for f64 {
    fn write(&self, out: &mut String) {
        float(out, *self);
    }
}

/// A float as Prometheus reads it: shortest round-trip digits, `+Inf`, `-Inf`, `NaN`.
pub fn float(out: &mut String, v: f64) {
    let _ = match v {
        f64::INFINITY => write!(out, "+Inf"),
        f64::NEG_INFINITY => write!(out, "-Inf"),
        v if v.is_nan() => write!(out, "NaN"),
        v => write!(out, "{v}"),
    };
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn families_samples_and_labels() {
        let mut t = Text::default();
        t.family("m_total", "Things, by \\ path\nand \"quote\".", Kind::Counter);
        t.sample("m_total")
            .label("a", "x")
            .plain("port", 80u16)
            .or_other("addr", Some("10.0.0.1".parse::<IpAddr>().unwrap()))
            .or_other("b", None::<u16>)
            .count(u64::MAX);
        t.family("g", "Gauge.", Kind::Gauge);
        t.sample("g").value(0.25);
        t.sample("g").value(f64::INFINITY);
        assert_eq!(
            t.finish(),
            "# HELP m_total Things, by \\\\ path\\nand \"quote\".\n# TYPE m_total counter\n\
             m_total{a=\"x\",port=\"80\",addr=\"10.0.0.1\",b=\"other\"} 18446744073709551615\n\
             # HELP g Gauge.\n# TYPE g gauge\ng 0.25\ng +Inf\n"
        );
    }

    #[test]
    fn cached_labels_are_reused() {
        let mut row = String::new();
        Sample::labels(&mut row).label("a", "x\"").plain("p", 1u16);
        let mut t = Text::default();
        t.family("m", "M.", Kind::Gauge);
        t.sample("m").cached(&row).label("s", "on").count(1);
        t.sample("m").label("s", "on").cached(&row).count(2);
        t.sample("m").cached(&row).count(3);
        assert!(t.finish().ends_with(
            "m{a=\"x\\\"\",p=\"1\",s=\"on\"} 1\nm{s=\"on\",a=\"x\\\"\",p=\"1\"} 2\nm{a=\"x\\\"\",p=\"1\"} 3\n"
        ));
    }

    #[test]
    fn empty_families_are_left_out() {
        let mut t = Text::default();
        t.family("empty", "No samples.", Kind::Counter);
        t.family("one", "One.", Kind::Gauge);
        t.sample("one").value(1.0);
        t.family("empty_too", "None here either.", Kind::Gauge);
        assert_eq!(t.finish(), "# HELP one One.\n# TYPE one gauge\none 1\n");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut t = Text::default();
        t.family("m", "M.", Kind::Gauge);
        t.sample("m").label("w", "a\"b\\c\nd").value(1.0);
        assert!(t.finish().ends_with("m{w=\"a\\\"b\\\\c\\nd\"} 1\n"));
    }

    #[test]
    fn histograms_are_cumulative() {
        let mut h = Histogram::new(&[0.5, 1.0]);
        h.observe(0.5);
        h.observe(0.75);
        h.observe(3.0);
        let mut t = Text::default();
        t.family("d_seconds", "D.", Kind::Histogram);
        histogram(&mut t, "d_seconds", &h, |s| s.label("w", "x"));
        assert_eq!(
            t.finish(),
            "# HELP d_seconds D.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{w=\"x\",le=\"0.5\"} 1\nd_seconds_bucket{w=\"x\",le=\"1\"} 2\n\
             d_seconds_bucket{w=\"x\",le=\"+Inf\"} 3\nd_seconds_sum{w=\"x\"} 4.25\nd_seconds_count{w=\"x\"} 3\n"
        );
    }

    proptest! {
        #[test]
        fn plain_numbers_and_addresses_print_as_display_does(n in any::<u64>(), p in any::<u16>(), a in any::<[u8; 16]>()) {
            let ip = crate::collect::labels::canonical_ip(a);
            let mut s = String::new();
            n.write(&mut s);
            s.push(' ');
            p.write(&mut s);
            s.push(' ');
            ip.write(&mut s);
            prop_assert_eq!(s, format!("{n} {p} {ip}"));
        }
    }

    #[test]
    fn floats() {
        for (v, text) in [
            (0.1, "0.1"),
            (600.0, "600"),
            (1e-9, "0.000000001"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ] {
            let mut s = String::new();
            float(&mut s, v);
            assert_eq!(s, text);
        }
    }

    /// Reads a label value back as Prometheus does; `None` if it would end early (a bare quote)
    /// or break the line.
    fn unescape(s: &str) -> Option<String> {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next()? {
                    'n' => out.push('\n'),
                    c => out.push(c),
                },
                '"' | '\n' => return None,
                c => out.push(c),
            }
        }
        Some(out)
    }

    proptest! {
        #[test]
        fn escaped_label_values_read_back_whole(v in any::<String>()) {
            let mut s = String::new();
            escape(&mut s, &v, true);
            prop_assert_eq!(unescape(&s), Some(v));
        }
    }
}
