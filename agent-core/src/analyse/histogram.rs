//! A histogram as Prometheus keeps one: cumulative counts per upper bound (`le`, inclusive),
//! sum and count. Exposition writes it (`serve::exposition::histogram`).

#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    cumulative: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            cumulative: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        for (n, le) in self.cumulative.iter_mut().zip(self.bounds) {
            *n += u64::from(v <= *le);
        }
        self.sum += v;
        self.count += 1;
    }

    /// `(upper bound, observations at or below it)`, without `+Inf`.
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.bounds.iter().copied().zip(self.cumulative.iter().copied())
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}
