//! HTTP client side of the operator subcommands (`calls`, `hangup`, `routes`, `patch`):
//! each one is a request or two to a running gateway's `/v1` API, printed as a table
//! for a person or as the API's own JSON (`--json`) for a script.
//!
//! Where the gateway is: `--api-url` / `TELEPATCH_API_URL`, else `http://` + the
//! configuration's `api.listen` (loopback when that is a wildcard address). Plain HTTP
//! only: the API binds loopback by default, and a deployment that exposes it puts a
//! TLS-terminating proxy in front. Proxy environment variables are ignored on purpose:
//! an `http_proxy` meant for the internet must not swallow requests to the gateway.
//!
//! `--json` prints the API's JSON. The paginated lists (calls, patches) are fetched page
//! after page and printed as one page holding everything: `{"items": [...], "total": n,
//! "offset": 0}`. `routes add` takes the route as JSON text, `@file.json`, or `@-`
//! (standard input).
//!
//! Failures of the API come back as its problem body `{error, message, field?}` and
//! become [`ClientError::Api`], which `main` prints as `telepatch: <status>: <message>`.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use api::control::{CallInfo, PatchInfo, PatchRole};
use api::http::Problem;
use api::model::RouteMatch;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;

use super::{ApiClientArgs, CallsArgs, HangupArgs, PatchCommand, RoutesCommand};
use crate::config::Config;

/// Largest page the API serves (`MAX_PAGE` of the handlers): fewest round trips.
const PAGE_LIMIT: usize = 1000;
/// Give up connecting after this long: the gateway is local or on the LAN.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Give up on a whole request after this long (creating a node loads a WAV file).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most characters of a non-JSON error body quoted in a message.
const MAX_QUOTED_BODY: usize = 200;

/// Why an operator subcommand failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(super) enum ClientError {
    /// No token was given.
    #[error(
        "no API token: pass --token or set TELEPATCH_TOKEN \
         (an administrator creates one with `telepatch token create --name <who> --scope read|admin`)"
    )]
    NoToken,
    /// `--api-url` is not a usable URL.
    #[error("invalid API URL {url:?}: {reason}")]
    BadUrl {
        /// What was given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request did not get a response.
    #[error(
        "cannot reach the gateway's API at {url} (is `telepatch serve` running there? see --api-url)"
    )]
    Unreachable {
        /// The request's URL.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The API answered with an error.
    #[error("{status}: {message}{}", field.as_ref().map(|f| format!(" (field `{f}`)")).unwrap_or_default())]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The problem's message, or the start of a body that is not a problem.
        message: String,
        /// The request field at fault, when the API names one.
        field: Option<String>,
    },
    /// A successful response whose body is not what the API documents.
    #[error("unexpected response from {url}: {reason}")]
    BadResponse {
        /// The request's URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The route file of `routes add @file` cannot be read.
    #[error("cannot read the route from {}", path.display())]
    RouteFile {
        /// The file (`-` for standard input).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The route given to `routes add` is not JSON.
    #[error("the route is not valid JSON")]
    RouteJson {
        /// Where and why parsing failed.
        #[source]
        source: serde_json::Error,
    },
    /// Writing the output failed.
    #[error("cannot write the output")]
    Output {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// `GET /v1/calls` and `GET /v1/patches` return pages of this shape (`Page<T>` of the
/// handlers).
#[derive(Debug, Deserialize)]
struct Page {
    items: Vec<Value>,
    total: usize,
    offset: usize,
}

/// A connection to one gateway's API with one token.
struct ApiClient {
    http: reqwest::Client,
    base: Url,
    token: String,
}

impl ApiClient {
    fn new(args: &ApiClientArgs, config: &Config) -> Result<ApiClient, ClientError> {
        let token = args
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ClientError::NoToken)?;
        let base = base_url(args.api_url.as_deref(), config.api.listen)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("telepatch-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| ClientError::Unreachable {
                url: base.to_string(),
                source,
            })?;
        Ok(ApiClient {
            http,
            base,
            token: token.to_owned(),
        })
    }

    /// The URL of `/v1/<segments...>`, each segment percent-encoded (route names may
    /// hold any character), under whatever path prefix the base URL has.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("v1").extend(segments);
        }
        url
    }

    /// Sends a request; returns the body of a 2xx response, or the API's problem.
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Vec<u8>, ClientError> {
        let mut request = self
            .http
            .request(method, url.clone())
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let unreachable = |source| ClientError::Unreachable {
            url: url.to_string(),
            source,
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(unreachable)?;
        if status.is_success() {
            Ok(bytes.to_vec())
        } else {
            Err(problem(status, &bytes))
        }
    }

    /// Sends a request and parses the JSON the API answers with.
    async fn send_json(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let bytes = self.send(method, url.clone(), body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadResponse {
            url: url.to_string(),
            reason: e.to_string(),
        })
    }

    /// Every item of a paginated list, fetching page after page. Items that shift
    /// between pages while calls come and go may be missed or repeated, as with any
    /// offset pagination; `key` drops the repeats.
    async fn list_all(&self, segment: &str, key: &str) -> Result<Vec<Value>, ClientError> {
        let mut items: Vec<Value> = Vec::new();
        let mut offset = 0;
        loop {
            let mut url = self.url(&[segment]);
            url.query_pairs_mut()
                .append_pair("offset", &offset.to_string())
                .append_pair("limit", &PAGE_LIMIT.to_string());
            let value = self.send_json(Method::GET, url.clone(), None).await?;
            let page: Page =
                serde_json::from_value(value).map_err(|e| ClientError::BadResponse {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
            if page.offset != offset {
                return Err(ClientError::BadResponse {
                    url: url.to_string(),
                    reason: format!("asked for offset {offset}, got {}", page.offset),
                });
            }
            let received = page.items.len();
            for item in page.items {
                if !items
                    .iter()
                    .any(|seen| seen.get(key).is_some() && seen.get(key) == item.get(key))
                {
                    items.push(item);
                }
            }
            offset += received;
            if received == 0 || offset >= page.total {
                return Ok(items);
            }
        }
    }
}

/// The API's base URL: `explicit` (a scheme is optional: `host:port` means HTTP), else
/// the configured listen address, with a wildcard address replaced by loopback.
fn base_url(explicit: Option<&str>, listen: SocketAddr) -> Result<Url, ClientError> {
    let text = match explicit.map(str::trim).filter(|u| !u.is_empty()) {
        Some(url) if url.contains("://") => url.to_owned(),
        Some(url) => format!("http://{url}"),
        None => {
            let ip = match listen.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            format!("http://{}", SocketAddr::new(ip, listen.port()))
        }
    };
    let bad = |reason: String| ClientError::BadUrl {
        url: text.clone(),
        reason,
    };
    let url = Url::parse(&text).map_err(|e| bad(e.to_string()))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(bad(
                "this client speaks plain HTTP only; reach the gateway directly with http://"
                    .into(),
            ));
        }
        other => return Err(bad(format!("unsupported scheme {other:?}; use http://"))),
    }
    if url.host().is_none() {
        return Err(bad("no host".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a base URL has no query or fragment".into()));
    }
    Ok(url)
}

/// The error for a non-2xx response: the API's problem body, or the start of whatever
/// else answered (a proxy's HTML page, say).
fn problem(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<Problem>(body) {
        Ok(problem) => ClientError::Api {
            status,
            message: problem.message,
            field: problem.field,
        },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = if text.is_empty() {
                "(empty response)".to_owned()
            } else if text.chars().count() > MAX_QUOTED_BODY {
                format!(
                    "{}...",
                    text.chars().take(MAX_QUOTED_BODY).collect::<String>()
                )
            } else {
                text.to_owned()
            };
            ClientError::Api {
                status,
                message,
                field: None,
            }
        }
    }
}

/// Writes `text` to standard output. A closed pipe (`telepatch calls | head`) is not an
/// error: the reader has what it wanted.
fn emit(text: &str) -> Result<(), ClientError> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(ClientError::Output { source: e }),
        _ => Ok(()),
    }
}

/// Writes `value` as indented JSON.
fn emit_json(value: &Value) -> Result<(), ClientError> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| ClientError::Output { source: e.into() })?;
    text.push('\n');
    emit(&text)
}

/// Left-aligned columns two spaces apart, headers first, no trailing spaces.
fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `8 kHz`, `44.1 kHz`; `-` before the caller's first audio tells its rate.
fn format_rate(hz: u32) -> String {
    match hz {
        0 => "-".to_owned(),
        hz if hz % 1000 == 0 => format!("{} kHz", hz / 1000),
        hz => format!("{} kHz", f64::from(hz) / 1000.0),
    }
}

/// `m:ss`, or `h:mm:ss` from an hour on.
fn format_duration(ms: u64) -> String {
    let s = ms / 1000;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// An RMS level; the API reports digital silence as -120 dBFS.
fn format_level(dbfs: f32) -> String {
    if dbfs <= -120.0 {
        "silence".to_owned()
    } else {
        format!("{dbfs:.1} dBFS")
    }
}

fn format_gain(db: f32) -> String {
    format!("{db:+.1} dB")
}

fn yes_no(flag: bool) -> String {
    if flag { "yes" } else { "no" }.to_owned()
}

fn parse_items<T: serde::de::DeserializeOwned>(
    items: &[Value],
    what: &str,
) -> Result<Vec<T>, ClientError> {
    items
        .iter()
        .map(|item| serde_json::from_value(item.clone()))
        .collect::<Result<_, _>>()
        .map_err(|e| ClientError::BadResponse {
            url: format!("/v1/{what}"),
            reason: e.to_string(),
        })
}

fn calls_table(calls: &[CallInfo]) -> String {
    let rows: Vec<Vec<String>> = calls
        .iter()
        .map(|c| {
            vec![
                c.uuid.to_string(),
                serde_json::to_value(c.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                format_rate(c.caller_rate_hz),
                format_duration(c.duration_ms),
                c.route.clone().unwrap_or_else(|| "-".to_owned()),
                yes_no(c.talking),
                format_level(c.voice_level.rms_dbfs),
            ]
        })
        .collect();
    render_table(
        &[
            "UUID", "STATE", "RATE", "DURATION", "ROUTE", "TALKING", "VOICE",
        ],
        &rows,
    )
}

fn patches_table(patches: &[PatchInfo]) -> String {
    let rows: Vec<Vec<String>> = patches
        .iter()
        .map(|p| {
            let role = match p.role {
                PatchRole::Normal => "normal",
                PatchRole::Lobby => "lobby",
                PatchRole::Monitor => "monitor",
            };
            vec![
                p.id.to_string(),
                format!("{} -> {}", p.source, p.sink),
                format_gain(p.gain_db),
                role.to_owned(),
                yes_no(p.persistent),
            ]
        })
        .collect();
    render_table(&["ID", "PATCH", "GAIN", "ROLE", "PERSISTENT"], &rows)
}

/// A route's `match` in a few words; unknown shapes are shown as JSON.
fn format_match(value: Option<&Value>) -> String {
    let Some(value) = value else {
        return "-".to_owned();
    };
    match serde_json::from_value::<RouteMatch>(value.clone()) {
        Ok(RouteMatch::Uuid(uuid)) => format!("uuid {uuid}"),
        Ok(RouteMatch::UuidPrefix(prefix)) => format!("prefix {prefix}"),
        Ok(RouteMatch::Default) => "default".to_owned(),
        Err(_) => value.to_string(),
    }
}

/// Routes are read loosely (field by field) so that a route the API returns with more
/// fields than this client knows still lists.
fn routes_table(routes: &[Value]) -> String {
    let text = |route: &Value, key: &str| {
        route
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_owned()
    };
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            vec![
                text(r, "name"),
                r.get("priority")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
                    .to_string(),
                format_match(r.get("match")),
                text(r, "source"),
                r.get("actions")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
                    .to_string(),
            ]
        })
        .collect();
    render_table(&["NAME", "PRIORITY", "MATCH", "SOURCE", "ACTIONS"], &rows)
}

/// The route argument of `routes add`: JSON text, `@file.json`, or `@-` for standard
/// input. Only the syntax is checked here; the API validates the route itself and
/// says what is wrong with it.
fn read_route(argument: &str) -> Result<Value, ClientError> {
    let text = match argument.strip_prefix('@') {
        Some("-") => {
            let mut text = String::new();
            io::stdin()
                .read_to_string(&mut text)
                .map_err(|source| ClientError::RouteFile {
                    path: "-".into(),
                    source,
                })?;
            text
        }
        Some(path) => std::fs::read_to_string(path).map_err(|source| ClientError::RouteFile {
            path: path.into(),
            source,
        })?,
        None => argument.to_owned(),
    };
    serde_json::from_str(&text).map_err(|source| ClientError::RouteJson { source })
}

/// `telepatch calls`: every live call, across as many pages as it takes.
pub(super) async fn calls(args: CallsArgs, config: &Config) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.api, config)?;
    let items = client.list_all("calls", "uuid").await?;
    if args.api.json {
        let total = items.len();
        emit_json(&serde_json::json!({ "items": items, "total": total, "offset": 0 }))?;
    } else {
        emit(&calls_table(&parse_items::<CallInfo>(&items, "calls")?))?;
    }
    Ok(())
}

/// `telepatch hangup UUID`: the gateway sends `00 00 00`, the dialplan continues.
pub(super) async fn hangup(args: HangupArgs, config: &Config) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.api, config)?;
    let uuid = args.uuid.to_string();
    client
        .send(Method::DELETE, client.url(&["calls", &uuid]), None)
        .await?;
    eprintln!("hangup sent to call {uuid}");
    Ok(())
}

/// `telepatch routes list|add|delete`.
pub(super) async fn routes(command: RoutesCommand, config: &Config) -> anyhow::Result<()> {
    match command {
        RoutesCommand::List { api } => {
            let client = ApiClient::new(&api, config)?;
            let url = client.url(&["routes"]);
            let value = client.send_json(Method::GET, url.clone(), None).await?;
            if api.json {
                emit_json(&value)?;
            } else {
                let routes = value.as_array().ok_or_else(|| ClientError::BadResponse {
                    url: url.to_string(),
                    reason: "expected a JSON array".into(),
                })?;
                emit(&routes_table(routes))?;
            }
        }
        RoutesCommand::Add { route, api } => {
            let route = read_route(&route)?;
            let client = ApiClient::new(&api, config)?;
            let created = client
                .send_json(Method::POST, client.url(&["routes"]), Some(&route))
                .await?;
            if api.json {
                emit_json(&created)?;
            } else {
                emit(&routes_table(std::slice::from_ref(&created)))?;
            }
        }
        RoutesCommand::Delete { name, api } => {
            let client = ApiClient::new(&api, config)?;
            client
                .send(Method::DELETE, client.url(&["routes", &name]), None)
                .await?;
            eprintln!("route {name:?} deleted");
        }
    }
    Ok(())
}

/// `telepatch patch list|add|delete`.
pub(super) async fn patch(command: PatchCommand, config: &Config) -> anyhow::Result<()> {
    match command {
        PatchCommand::List { api } => {
            let client = ApiClient::new(&api, config)?;
            let items = client.list_all("patches", "id").await?;
            if api.json {
                let total = items.len();
                emit_json(&serde_json::json!({ "items": items, "total": total, "offset": 0 }))?;
            } else {
                emit(&patches_table(&parse_items::<PatchInfo>(
                    &items, "patches",
                )?))?;
            }
        }
        PatchCommand::Add {
            source,
            sink,
            gain_db,
            persistent,
            api,
        } => {
            let client = ApiClient::new(&api, config)?;
            let body = serde_json::json!({ "source": source, "sink": sink, "gain_db": gain_db, "persistent": persistent });
            let created = client
                .send_json(Method::POST, client.url(&["patches"]), Some(&body))
                .await?;
            if api.json {
                emit_json(&created)?;
            } else {
                emit(&patches_table(&parse_items::<PatchInfo>(
                    std::slice::from_ref(&created),
                    "patches",
                )?))?;
            }
        }
        PatchCommand::Delete { id, api } => {
            let client = ApiClient::new(&api, config)?;
            client
                .send(
                    Method::DELETE,
                    client.url(&["patches", &id.to_string()]),
                    None,
                )
                .await?;
            eprintln!("patch {id} removed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_comes_from_the_flag_or_the_listen_address() {
        let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            base_url(None, listen).unwrap().as_str(),
            "http://127.0.0.1:8080/"
        );
        assert_eq!(
            base_url(None, "0.0.0.0:81".parse().unwrap())
                .unwrap()
                .as_str(),
            "http://127.0.0.1:81/"
        );
        assert_eq!(
            base_url(None, "[::]:81".parse().unwrap()).unwrap().as_str(),
            "http://[::1]:81/"
        );
        assert_eq!(
            base_url(Some("10.0.0.5:9000"), listen).unwrap().as_str(),
            "http://10.0.0.5:9000/"
        );
        assert_eq!(
            base_url(Some("http://gw/telepatch/"), listen)
                .unwrap()
                .as_str(),
            "http://gw/telepatch/"
        );
        assert!(matches!(
            base_url(Some("https://gw"), listen),
            Err(ClientError::BadUrl { .. })
        ));
        assert!(matches!(
            base_url(Some("ftp://gw"), listen),
            Err(ClientError::BadUrl { .. })
        ));
        assert!(matches!(
            base_url(Some("http://gw/?x=1"), listen),
            Err(ClientError::BadUrl { .. })
        ));
    }

    #[test]
    fn urls_keep_the_base_path_and_encode_segments() {
        let client = |base: &str| ApiClient {
            http: reqwest::Client::new(),
            base: Url::parse(base).unwrap(),
            token: "t".into(),
        };
        assert_eq!(
            client("http://gw:1").url(&["routes", "a b/c"]).as_str(),
            "http://gw:1/v1/routes/a%20b%2Fc"
        );
        assert_eq!(
            client("http://gw/telepatch/").url(&["calls"]).as_str(),
            "http://gw/telepatch/v1/calls"
        );
        assert_eq!(
            client("http://gw/telepatch").url(&["calls"]).as_str(),
            "http://gw/telepatch/v1/calls"
        );
    }

    #[test]
    fn problems_print_status_message_and_field() {
        let e = problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"error":"unprocessable","message":"no node player:x"}"#,
        );
        assert_eq!(e.to_string(), "422 Unprocessable Entity: no node player:x");
        let e = problem(
            StatusCode::BAD_REQUEST,
            br#"{"error":"invalid","message":"out of range","field":"gain_db"}"#,
        );
        assert_eq!(
            e.to_string(),
            "400 Bad Request: out of range (field `gain_db`)"
        );
        let e = problem(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(e.to_string(), "502 Bad Gateway: <html>bad gateway</html>");
        let e = problem(StatusCode::BAD_GATEWAY, &[b'x'; 1000]);
        assert_eq!(
            e.to_string().len(),
            "502 Bad Gateway: ".len() + MAX_QUOTED_BODY + 3
        );
        assert_eq!(
            problem(StatusCode::NOT_FOUND, b"").to_string(),
            "404 Not Found: (empty response)"
        );
    }

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let text = render_table(
            &["ID", "NAME"],
            &[vec!["1".into(), "a".into()], vec!["100".into(), "".into()]],
        );
        assert_eq!(text, "ID   NAME\n1    a\n100\n");
        assert_eq!(render_table(&["ID"], &[]), "ID\n");
    }

    #[test]
    fn cells_are_formatted_for_people() {
        assert_eq!(format_rate(0), "-");
        assert_eq!(format_rate(8000), "8 kHz");
        assert_eq!(format_rate(44100), "44.1 kHz");
        assert_eq!(format_duration(59_999), "0:59");
        assert_eq!(format_duration(61_000), "1:01");
        assert_eq!(format_duration(3_723_000), "1:02:03");
        assert_eq!(format_level(-120.0), "silence");
        assert_eq!(format_level(-6.02), "-6.0 dBFS");
        assert_eq!(format_gain(-3.0), "-3.0 dB");
        assert_eq!(format_gain(0.0), "+0.0 dB");
    }

    #[test]
    fn route_matches_read_as_words() {
        let uuid = "40325ec2-5efd-4bd3-805f-53576e581d13";
        let routes = vec![
            serde_json::json!({"name": "one", "priority": 5, "match": {"uuid": uuid}, "source": "api", "actions": [{}, {}]}),
            serde_json::json!({"name": "show", "match": {"uuid_prefix": "c0de"}, "source": "config", "actions": []}),
            serde_json::json!({"name": "rest", "match": "default", "source": "config"}),
        ];
        let text = routes_table(&routes);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[1].starts_with("one   5")
                && lines[1].contains(&format!("uuid {uuid}"))
                && lines[1].ends_with("api     2"),
            "{text}"
        );
        assert!(
            lines[2].contains("prefix c0de") && lines[2].ends_with("config  0"),
            "{text}"
        );
        assert!(lines[3].contains("default"), "{text}");
    }

    #[test]
    fn route_argument_is_text_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.json");
        std::fs::write(&file, r#"{"name":"f","match":"default"}"#).unwrap();
        assert_eq!(
            read_route(&format!("@{}", file.display())).unwrap()["name"],
            "f"
        );
        assert_eq!(read_route(r#"{"name":"t"}"#).unwrap()["name"], "t");
        assert!(matches!(
            read_route("{nope"),
            Err(ClientError::RouteJson { .. })
        ));
        assert!(matches!(
            read_route("@/nonexistent/r.json"),
            Err(ClientError::RouteFile { .. })
        ));
    }
}
