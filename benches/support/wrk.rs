//! wrk's report, read (`wrk --latency`).

/// What one wrk run reported.
#[derive(Clone, Copy, Debug, Default)]
pub struct WrkReport {
    pub requests: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub max_us: f64,
    /// Answers outside 2xx and 3xx (wrk counts them together).
    pub non_2xx: u64,
    /// Connect, read, write and timeout errors.
    pub socket_errors: u64,
}

impl WrkReport {
    pub fn parse(text: &str) -> Self {
        let line_value = |prefix: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()))
        };
        let requests: f64 = text
            .lines()
            .find_map(|l| {
                l.trim()
                    .split_once(" requests in ")
                    .and_then(|(n, _)| n.parse().ok())
            })
            .unwrap_or(0.0);
        let rps: f64 = line_value("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        // "Latency   1.23ms  456.00us  12.00ms   90.00%": mean, sd, max.
        let latency: Vec<String> = line_value("Latency")
            .map(|v| v.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let field = |i: usize| latency.get(i).map_or(f64::NAN, |v| duration_us(v));
        Self {
            requests,
            rps,
            p50_us: line_value("50%").map_or(f64::NAN, |v| duration_us(&v)),
            p99_us: line_value("99%").map_or(f64::NAN, |v| duration_us(&v)),
            mean_us: field(0),
            max_us: field(2),
            non_2xx: line_value("Non-2xx or 3xx responses:")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            // "connect 0, read 12, write 0, timeout 0"
            socket_errors: line_value("Socket errors:")
                .map(|v| {
                    v.split(',')
                        .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                        .sum()
                })
                .unwrap_or(0),
        }
    }

    /// Requests the client saw fail.
    pub fn failed(&self) -> u64 {
        self.non_2xx + self.socket_errors
    }
}

/// A wrk or h2load duration (`812.00us`, `1.23ms`, `2.00s`) in µs.
pub fn duration_us(text: &str) -> f64 {
    let (number, unit) = text
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((text, "s"), |i| text.split_at(i));
    let value: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => value,
        "ms" => value * 1e3,
        "s" => value * 1e6,
        "m" => value * 60e6,
        _ => f64::NAN,
    }
}
