//! The agent's HTTP endpoints, as plain data: a request line in, a [`Route`] or a
//! [`RouteError`] (with its status code) out. The server in the `prof` binary does the I/O.
//!
//! `/debug/pprof/profile?seconds=N` follows Go's `net/http/pprof`: it profiles the next N
//! seconds (30 if not given) and answers with a gzipped pprof file, so `go tool pprof`,
//! Parca and Alloy's `pyroscope.scrape` can read it. Unlike Go, a `seconds` that is not a
//! positive whole number is refused with 400 rather than replaced by the default.
//!
//! `/debug/pprof/symbol` also follows Go: `go tool pprof` asks it for the names of addresses
//! a profile left unresolved. GET answers `num_symbols: 1` (symbols are available); POST
//! takes `0xaddr+0xaddr+...` in the body (GET in the query) and answers one `0xaddr name`
//! line per address it can name, after that first line.

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/debug/pprof/profile`: profile the next `seconds`, answer with pprof.
    Profile {
        /// How long, already capped.
        seconds: u64,
    },
    /// `/flamegraph.svg`: the latest windows covering `seconds`, for one event.
    Flamegraph {
        /// How far back, already capped.
        seconds: u64,
        /// The event's name; `None` for the first event.
        event: Option<String>,
    },
    /// `/debug/pprof/symbol`: names for addresses, which come in the body of a POST or in
    /// the query of a GET.
    Symbol {
        /// The addresses in the query (a GET's), `+`-separated.
        query: String,
    },
    /// `/metrics`: Prometheus text.
    Metrics,
    /// `/healthz`.
    Health,
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// 404: no such endpoint.
    NotFound,
    /// 405: the endpoint only answers GET (and HEAD), or also POST for the symbol endpoint.
    MethodNotAllowed,
    /// 400: the query is malformed; the text says how.
    BadRequest(String),
}

impl RouteError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            RouteError::NotFound => 404,
            RouteError::MethodNotAllowed => 405,
            RouteError::BadRequest(_) => 400,
        }
    }

    /// A one-line body.
    pub fn message(&self) -> String {
        match self {
            RouteError::NotFound => "not found; try /debug/pprof/profile, /debug/pprof/symbol, \
                 /flamegraph.svg, /metrics or /healthz"
                .to_owned(),
            RouteError::MethodNotAllowed => {
                "only GET is served (and POST to /debug/pprof/symbol)".to_owned()
            }
            RouteError::BadRequest(why) => why.clone(),
        }
    }
}

/// Go's default for `/debug/pprof/profile` without `seconds`.
pub const DEFAULT_PROFILE_SECONDS: u64 = 30;

/// Routes one request. `max_seconds` caps `seconds`; `window_seconds` is the flame graph's
/// default span.
pub fn route(
    method: &str,
    url: &str,
    max_seconds: u64,
    window_seconds: u64,
) -> Result<Route, RouteError> {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    if path == "/debug/pprof/symbol" {
        if !matches!(method, "GET" | "HEAD" | "POST") {
            return Err(RouteError::MethodNotAllowed);
        }
        return Ok(Route::Symbol {
            query: query.to_owned(),
        });
    }
    let params = Params::parse(query)?;
    let route = match path {
        "/debug/pprof/profile" => {
            params.only(&["seconds"])?;
            let seconds = params.seconds(DEFAULT_PROFILE_SECONDS)?;
            Route::Profile {
                seconds: seconds.min(max_seconds),
            }
        }
        "/flamegraph.svg" => {
            params.only(&["seconds", "event"])?;
            let seconds = params.seconds(window_seconds)?;
            let event = params.get("event").map(str::to_owned);
            if event.as_deref() == Some("") {
                return Err(RouteError::BadRequest(
                    "event is empty; name a sampled event, e.g. event=cpu-clock".to_owned(),
                ));
            }
            Route::Flamegraph {
                seconds: seconds.min(max_seconds),
                event,
            }
        }
        "/metrics" => {
            params.only(&[])?;
            Route::Metrics
        }
        "/healthz" => {
            params.only(&[])?;
            Route::Health
        }
        _ => return Err(RouteError::NotFound),
    };
    if method != "GET" && method != "HEAD" {
        return Err(RouteError::MethodNotAllowed);
    }
    Ok(route)
}

/// The addresses of a symbol request, `+`-separated, each in Go's notation (`0x` for hex,
/// `0o` or a leading `0` for octal, `0b`, else decimal). Words that are not numbers, and 0,
/// are skipped, as Go skips them.
pub fn symbol_addresses(text: &str) -> Vec<u64> {
    text.split('+')
        .filter_map(|word| {
            let word = word.trim();
            let (digits, radix) =
                if let Some(hex) = word.strip_prefix("0x").or(word.strip_prefix("0X")) {
                    (hex, 16)
                } else if let Some(octal) = word.strip_prefix("0o").or(word.strip_prefix("0O")) {
                    (octal, 8)
                } else if let Some(binary) = word.strip_prefix("0b").or(word.strip_prefix("0B")) {
                    (binary, 2)
                } else if word.len() > 1 && word.starts_with('0') {
                    (&word[1..], 8)
                } else {
                    (word, 10)
                };
            u64::from_str_radix(&digits.replace('_', ""), radix).ok()
        })
        .filter(|&address| address != 0)
        .collect()
}

/// The answer to a symbol request: `num_symbols: 1`, then `0xaddr name` for each address
/// named.
pub fn symbol_answer(names: &[(u64, std::sync::Arc<str>)]) -> String {
    let mut text = String::from("num_symbols: 1\n");
    for (address, name) in names {
        text.push_str(&format!("{address:#x} {name}\n"));
    }
    text
}

/// Decoded query parameters, each given at most once.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: &str) -> Result<Params, RouteError> {
        let mut params: Vec<(String, String)> = Vec::new();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if params.iter().any(|(n, _)| *n == name) {
                return Err(RouteError::BadRequest(format!("`{name}` is given twice")));
            }
            params.push((name.into_owned(), value.into_owned()));
        }
        Ok(Params(params))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Refuses parameters this endpoint does not take, so a typo is not silently ignored.
    fn only(&self, allowed: &[&str]) -> Result<(), RouteError> {
        match self.0.iter().find(|(n, _)| !allowed.contains(&n.as_str())) {
            None => Ok(()),
            Some((name, _)) if allowed.is_empty() => Err(RouteError::BadRequest(format!(
                "unknown parameter `{name}`: this endpoint takes none"
            ))),
            Some((name, _)) => Err(RouteError::BadRequest(format!(
                "unknown parameter `{name}`; this endpoint takes {}",
                allowed.join(", ")
            ))),
        }
    }

    fn seconds(&self, default: u64) -> Result<u64, RouteError> {
        let Some(text) = self.get("seconds") else {
            return Ok(default);
        };
        match text.parse::<u64>() {
            Ok(seconds) if seconds > 0 => Ok(seconds),
            _ => Err(RouteError::BadRequest(format!(
                "seconds must be a whole number of seconds, at least 1, not `{text}`"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Addresses are read as Go's `strconv.ParseUint(word, 0, 64)` reads them, and answers
    /// are written as Go's `%#x name` lines.
    #[test]
    fn symbol_protocol() {
        assert_eq!(
            symbol_addresses("0x7f00+0X10+17+010+0b11+0+junk+"),
            [0x7f00, 0x10, 17, 8, 3]
        );
        assert!(symbol_addresses("").is_empty());
        assert_eq!(
            symbol_answer(&[(0x7f00, Arc::from("main")), (0x10, Arc::from("a::b"))]),
            "num_symbols: 1\n0x7f00 main\n0x10 a::b\n"
        );
        assert_eq!(symbol_answer(&[]), "num_symbols: 1\n");
    }

    fn ok(url: &str) -> Route {
        route("GET", url, 60, 10).unwrap_or_else(|err| panic!("{url}: {err:?}"))
    }

    fn status(url: &str) -> u16 {
        route("GET", url, 60, 10).expect_err(url).status()
    }

    /// Go's defaults and the cap.
    #[test]
    fn profile_seconds() {
        assert_eq!(ok("/debug/pprof/profile"), Route::Profile { seconds: 30 });
        assert_eq!(
            ok("/debug/pprof/profile?seconds=2"),
            Route::Profile { seconds: 2 }
        );
        assert_eq!(
            ok("/debug/pprof/profile?seconds=3600"),
            Route::Profile { seconds: 60 }
        );
        assert_eq!(
            ok("/flamegraph.svg?event=cpu-clock"),
            Route::Flamegraph {
                seconds: 10,
                event: Some("cpu-clock".into())
            }
        );
        assert_eq!(ok("/metrics"), Route::Metrics);
        assert_eq!(
            ok("/debug/pprof/symbol?0x10+0x20"),
            Route::Symbol {
                query: "0x10+0x20".into()
            }
        );
        assert!(route("POST", "/debug/pprof/symbol", 60, 10).is_ok());
        assert_eq!(ok("/healthz"), Route::Health);
    }

    /// Malformed queries are 400, unknown paths 404, other methods 405.
    #[test]
    fn refusals() {
        for url in [
            "/debug/pprof/profile?seconds=abc",
            "/debug/pprof/profile?seconds=-1",
            "/debug/pprof/profile?seconds=0",
            "/debug/pprof/profile?seconds=",
            "/debug/pprof/profile?seconds=1.5",
            "/debug/pprof/profile?seconds=99999999999999999999999",
            "/debug/pprof/profile?seconds=1&seconds=2",
            "/debug/pprof/profile?secs=1",
            "/flamegraph.svg?event=",
            "/flamegraph.svg?seconds=%ff",
            "/metrics?x=1",
        ] {
            assert_eq!(status(url), 400, "{url}");
        }
        assert_eq!(status("/debug/pprof/heap"), 404);
        assert_eq!(
            route("POST", "/metrics", 60, 10),
            Err(RouteError::MethodNotAllowed)
        );
    }
}
