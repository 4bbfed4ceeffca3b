//! `funksvd serve` as a user runs it: started on an ephemeral port against a model trained in
//! the test, its answers equal `funksvd recommend`'s lists and the model's own methods (fold-in,
//! similar items, predictions); bad requests get 400 or 404 with a reason and never take it
//! down; a newly published model is picked up and a broken one refused while the old one keeps
//! answering, as it does while S3 is down; the token; the page in headless Chromium.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use funksvd::ids::Id;
use funksvd::mf::Model;
use serde_json::{json, Value};

/// A running `funksvd serve` (killed when dropped).
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// `funksvd serve --listen 127.0.0.1:0 ARGS`, once it listens.
    fn start(args: &[&str]) -> Server {
        Server::start_with(args, &[])
    }

    /// `start` with extra environment (an S3 server's).
    fn start_with(args: &[&str], env: &[(&'static str, String)]) -> Server {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start funksvd serve");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let shared = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on http://") {
                    let _ = tx.send(line[at + 20..].trim().to_string());
                }
                shared.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("serve did not listen:\n{}", log.lock().unwrap()));
        Server { child, addr, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Send `request` (whole, as bytes) and read the answer: status and body (None if the
    /// server closed the connection without an answer).
    fn raw(&self, request: &[u8]) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let _ = stream.write_all(request);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let body = match head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            true => unchunk(body),
            false => body.to_string(),
        };
        Some((status, body))
    }

    fn request(&self, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.raw(request.as_bytes())
            .unwrap_or_else(|| panic!("no answer to {method} {path}:\n{}", self.log()))
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let (status, body) = self.request("GET", path, "", "");
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let (status, body) = self.request("POST", path, "Content-Type: application/json\r\n", body);
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    /// /healthz's model version once it is ready and `accept` takes it (panics after 60 s).
    fn wait_version(&self, accept: impl Fn(&str) -> bool) -> String {
        let version = |s: &Server| match s.get("/healthz") {
            (200, body) => body["model_version"].as_str().map(str::to_string),
            _ => None,
        };
        let found = std::cell::RefCell::new(None);
        self.wait_until("a new model", |s| {
            *found.borrow_mut() = version(s).filter(|v| accept(v));
            found.borrow().is_some()
        });
        found.into_inner().unwrap()
    }

    /// Look every 100 ms until `done` holds (panics, naming `what`, after 60 s).
    fn wait_until(&self, what: &str, done: impl Fn(&Server) -> bool) {
        let started = Instant::now();
        while !done(self) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no {what} within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unchunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// A JSON id as the text `recommend`'s output has.
fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// (item, score) of an answer's list.
fn listed(answer: &Value) -> Vec<(String, f32)> {
    answer["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {answer}"))
        .iter()
        .map(|e| (id_text(&e["item"]), e["score"].as_f64().unwrap() as f32))
        .collect()
}

fn from_model(model: &Model, list: &[funksvd::mf::Scored]) -> Vec<(String, f32)> {
    list.iter()
        .map(|s| (model.item_ids[s.item as usize].to_string(), s.score))
        .collect()
}

/// A quick implicit model of MovieLens, and the ratings it was trained on.
fn ml_model(
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let data = shared_data("ml-latest-small/ratings.csv")?;
    let model = dir.join(name);
    let mut args = ml_args(s(&data), s(&model));
    args.extend([
        "--objective",
        "implicit",
        "--factors",
        "16",
        "--epochs",
        "4",
        "--holdout",
        "0",
    ]);
    args.extend_from_slice(extra);
    mpirun(2, &args).ok();
    Some((model, data))
}

#[test]
fn answers_equal_recommend_and_the_model_and_bad_requests_do_not_hurt() {
    let dir = temp_dir("serve-answers");
    let Some((model_dir, data)) = ml_model(&dir, "model", &[]) else {
        return;
    };
    let out = dir.join("recs");
    mpirun(
        2,
        &[
            "recommend",
            "--model",
            s(&model_dir),
            "--out",
            s(&out),
            "--top",
            "10",
            "--data",
            s(&data),
        ],
    )
    .ok();
    let mut batch: BTreeMap<String, Vec<(String, f32)>> = BTreeMap::new();
    for row in read_output(&out) {
        batch
            .entry(row.key)
            .or_default()
            .push((row.value, row.score));
    }
    let server = Server::start(&[
        "--model",
        s(&model_dir),
        "--data",
        s(&data),
        "--poll-seconds",
        "0.2",
        "--timeout-seconds",
        "1",
    ]);
    server.wait_version(|_| true);
    let model = load_model(&model_dir);

    // Users of the model: recommend's lists, scores to the bit.
    for (user, list) in batch.iter().step_by(20) {
        let (status, answer) = server.get(&format!("/v1/recommend?user={user}&n=10"));
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["source"], "model");
        assert_eq!(&listed(&answer), list, "user {user}");
    }
    // A visitor: the model's fold-in of their items, those items left out.
    let visitor: Vec<Id> = [1, 50, 260, 1196, 2571].map(Id::Int).to_vec();
    let items: Vec<u32> = visitor
        .iter()
        .map(|id| model.item(id).unwrap() as u32)
        .collect();
    let row = model.fold_in(&items, &[1.0; 5]).unwrap();
    let expected = model.top_n_rows(&[&row], 10, &[&items]).remove(0);
    let (status, answer) = server.post(
        "/v1/recommend",
        r#"{"items": [1, 50, "260", 1196, 2571, 99999999], "n": 10}"#,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["source"].as_str(), &answer["unknown_items"]),
        (Some("folded"), &json!([99999999]))
    );
    assert_eq!(listed(&answer), from_model(&model, &expected));
    // None of the visitor's items known: the most popular items in --data (Forrest Gump first).
    let (status, answer) = server.post("/v1/recommend", r#"{"items": [99999999], "n": 3}"#);
    assert_eq!(
        (status, answer["source"].as_str()),
        (200, Some("popular")),
        "{answer}"
    );
    assert_eq!(listed(&answer)[0], ("356".to_string(), 329.0));
    // Similar items and a prediction, as the model computes them.
    let i = model.item(&Id::Int(1)).unwrap();
    let (status, answer) = server.get("/v1/similar?item=1&n=5");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        listed(&answer),
        from_model(&model, &model.similar_many(&[i as u32], 5)[0])
    );
    let u = model.user(&Id::Int(1)).unwrap();
    let (status, answer) = server.get("/v1/predict?user=1&item=1");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["prediction"].as_f64().unwrap() as f32,
        model.predict(Some(u), Some(i))
    );
    let (status, answer) = server.get("/v1/history?user=1");
    assert_eq!(
        (status, answer["items"].as_array().map(Vec::len)),
        (200, Some(232)),
        "{answer}"
    );

    concurrent_requests_get_the_answers_of_one(&server, &batch);
    bad_requests_get_reasons(&server);
    random_requests_do_not_take_it_down(&server);
    // Still answering, the same.
    let (user, list) = batch.iter().next().unwrap();
    let (status, answer) = server.get(&format!("/v1/recommend?user={user}&n=10"));
    assert_eq!((status, &listed(&answer)), (200, list));
    let (status, metrics) = server.request("GET", "/metrics", "", "");
    assert_eq!(status, 200);
    for needle in [
        "funksvd_requests_total{endpoint=\"recommend_user\",status=\"200\"}",
        "funksvd_requests_total{endpoint=\"recommend_user\",status=\"404\"}",
        "funksvd_request_seconds_bucket{endpoint=\"similar\",le=\"+Inf\"} ",
        "funksvd_model_info{version=\"v",
        "funksvd_model_ready 1",
        "funksvd_reloads_total{result=\"ok\"} 1",
    ] {
        assert!(metrics.contains(needle), "{needle} not in:\n{metrics}");
    }
}

/// Requests at once from 8 clients (scored in batches by the server) get the lists each gets
/// alone: recommend's, to the bit; the batches are counted in /metrics.
fn concurrent_requests_get_the_answers_of_one(
    server: &Server,
    batch: &BTreeMap<String, Vec<(String, f32)>>,
) {
    let users: Vec<(&String, &Vec<(String, f32)>)> = batch.iter().step_by(3).collect();
    std::thread::scope(|scope| {
        for client in 0..8 {
            let users = &users;
            scope.spawn(move || {
                for (user, list) in users.iter().skip(client).step_by(2) {
                    let (status, answer) = server.get(&format!("/v1/recommend?user={user}&n=10"));
                    assert_eq!(status, 200, "{answer}");
                    assert_eq!(&listed(&answer), *list, "user {user}, client {client}");
                }
            });
        }
    });
    let (_, metrics) = server.request("GET", "/metrics", "", "");
    let count = |name: &str| -> u64 {
        let line = metrics.lines().find(|l| l.starts_with(name));
        line.and_then(|l| l.split(' ').nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in:\n{metrics}"))
    };
    let (batches, asks) = (
        count("funksvd_scoring_batches_total "),
        count("funksvd_scoring_requests_total "),
    );
    assert!(
        batches >= 1 && asks >= batches,
        "{batches} batches, {asks} asks"
    );
}

fn bad_requests_get_reasons(server: &Server) {
    for (path, status, says) in [
        (
            "/v1/recommend?user=123456789&n=10",
            404,
            "user 123456789: not in the model nor in --data",
        ),
        ("/v1/recommend?n=10", 400, "user: missing"),
        (
            "/v1/recommend?user=1&n=0",
            400,
            "n: \"0\" is not a whole number between 1 and 1000",
        ),
        ("/v1/recommend?user=1&n=-3", 400, "is not a whole number"),
        ("/v1/recommend?user=1&n=abc", 400, "is not a whole number"),
        (
            "/v1/recommend?user=1&n=100000000000000000000000",
            400,
            "is not a whole number",
        ),
        (
            "/v1/similar?item=424242424&n=3",
            404,
            "item 424242424: not in the model",
        ),
        (
            "/v1/predict?user=1&item=424242424",
            404,
            "item 424242424: not in the model",
        ),
        (
            "/v1/predict?user=424242424&item=1",
            404,
            "user 424242424: not in the model",
        ),
        ("/v2/anything", 404, "no such endpoint"),
    ] {
        let (got, answer) = server.get(path);
        assert_eq!(got, status, "{path}: {answer}");
        assert!(
            answer["error"].as_str().unwrap_or("").contains(says),
            "{path}: {answer}"
        );
    }
    for (body, says) in [
        ("{not json", "the body is not JSON"),
        ("[1, 2]", "must be a JSON object"),
        (r#"{"items": "1"}"#, "items: missing or not a list"),
        (r#"{"items": []}"#, "items: give 1 to 10000 ids, not 0"),
        (
            r#"{"items": [1], "n": 1.5}"#,
            "n: 1.5 is not a whole number",
        ),
        (
            r#"{"items": [1], "weights": [1, 2]}"#,
            "weights: must be a list of numbers, one per item",
        ),
        (
            r#"{"items": [1], "weights": [-1]}"#,
            "weights: -1 is not a finite number, 0 or more",
        ),
        (r#"{"items": [{"a": 1}]}"#, "is not an id"),
        (r#"{"items": [1], "user": 3}"#, "user: not a field"),
    ] {
        let (got, answer) = server.post("/v1/recommend", body);
        assert_eq!(got, 400, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap_or("").contains(says),
            "{body}: {answer}"
        );
    }
    let huge = format!(r#"{{"items": [{}]}}"#, vec!["1"; 200_000].join(","));
    let (got, _) = server.request("POST", "/v1/recommend", "", &huge);
    assert_eq!(got, 413, "a body over the limit");
}

/// A few hundred requests of random methods, paths, queries and bodies, and some that are not
/// HTTP at all: none answered 5xx, none unanswered where HTTP is spoken.
fn random_requests_do_not_take_it_down(server: &Server) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"];
    let paths = [
        "/v1/recommend",
        "/v1/similar",
        "/v1/predict",
        "/v1/history",
        "/healthz",
        "/",
        "/x",
    ];
    let params = [
        "user=1",
        "item=1",
        "n=5",
        "n=-1",
        "n=1e9",
        "user=",
        "item=%ff%fe",
        "user=%00",
        "n=99999999999",
    ];
    let bodies = [
        "",
        "{}",
        "null",
        "{\"items\":[1,2,3],\"n\":5}",
        "{\"items\":[null]}",
        "\u{1}\u{2}",
        "{\"n\":\"7\",\"items\":[\"50\"]}",
        "[[[[[[[[[[]]]]]]]]]]",
    ];
    for _ in 0..300 {
        let query: Vec<&str> = (0..next(4)).map(|_| params[next(params.len())]).collect();
        let path = format!("{}?{}", paths[next(paths.len())], query.join("&"));
        let method = methods[next(methods.len())];
        let (status, body) = server.request(method, &path, "", bodies[next(bodies.len())]);
        assert!(status < 500, "{method} {path}: {status} {body}");
    }
    for garbage in [
        &b"\x00\x01\x02\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
    ] {
        if let Some((status, _)) = server.raw(garbage) {
            assert!(status < 500, "{garbage:?}: {status}");
        }
    }
    // A body that never comes: answered 503 once --timeout-seconds (1 here) is up.
    let started = Instant::now();
    let (status, body) = server
        .raw(b"POST /v1/recommend HTTP/1.1\r\nContent-Length: 99\r\n\r\n{")
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("longer than --timeout-seconds"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_new_model_is_picked_up_and_a_broken_one_refused() {
    let dir = temp_dir("serve-reload");
    let Some((model_dir, _)) = ml_model(&dir, "model", &[]) else {
        return;
    };
    let server = Server::start(&["--model", s(&model_dir), "--poll-seconds", "0.2"]);
    let first = server.wait_version(|_| true);
    // Training publishes a new version (another seed) into the same location.
    ml_model(&dir, "model", &["--seed", "9"]).unwrap();
    let second = server.wait_version(|v| v != first);
    let model = load_model(&model_dir);
    let u = model.user(&Id::Int(7)).unwrap();
    let (status, answer) = server.get("/v1/recommend?user=7&n=10");
    assert_eq!(status, 200);
    assert_eq!(answer["model_version"], second.as_str());
    assert_eq!(
        listed(&answer),
        from_model(
            &model,
            &model.top_n_rows(&[model.user_row(u)], 10, &[&[]])[0]
        )
    );
    // A broken publication: refused, counted; the served model keeps answering.
    std::fs::write(
        model_dir.join("model.json"),
        b"{\"format\": \"funksvd-model\", ",
    )
    .unwrap();
    server.wait_until("a refusal", |s| failed_reloads(s) >= 1);
    std::thread::sleep(Duration::from_millis(600));
    let (status, again) = server.get("/v1/recommend?user=7&n=10");
    assert_eq!((status, &again), (200, &answer));
    assert!(
        server.log().contains(&format!("still serving {second}")),
        "{}",
        server.log()
    );
    // Only once: the same broken file is not tried again.
    assert_eq!(failed_reloads(&server), 1);
}

/// The count of failed reloads `/metrics` shows.
fn failed_reloads(server: &Server) -> u64 {
    let (_, text) = server.request("GET", "/metrics", "", "");
    text.lines()
        .find_map(|l| l.strip_prefix("funksvd_reloads_total{result=\"failed\"} "))
        .map_or(0, |n| n.parse().unwrap())
}

#[test]
fn with_s3_down_the_served_model_keeps_answering_and_a_new_one_comes_after() {
    let Some(mut s3) = S3Server::start("serve-s3", &["shop"]) else {
        return;
    };
    let Some(data) = shared_data("ml-latest-small/ratings.csv") else {
        return;
    };
    let env = s3.env();
    let train = |seed: &str| {
        let mut args = ml_args(s(&data), "s3://shop/model");
        args.extend([
            "--objective",
            "implicit",
            "--factors",
            "8",
            "--epochs",
            "2",
            "--seed",
            seed,
        ]);
        mpirun_with(2, &args, &env).ok();
    };
    train("1");
    let server = Server::start_with(
        &["--model", "s3://shop/model", "--poll-seconds", "0.2"],
        &s3.env(),
    );
    let first = server.wait_version(|_| true);
    let (_, before) = server.get("/v1/recommend?user=1&n=5");
    s3.stop();
    server.wait_until("failed looks", |s| failed_reloads(s) >= 3);
    let (status, during) = server.get("/v1/recommend?user=1&n=5");
    assert_eq!(
        (status, &during),
        (200, &before),
        "the old model answers while S3 is down"
    );
    assert_eq!(server.get("/healthz").0, 200);
    let log = server.log();
    assert_eq!(
        log.matches("model not loaded").count(),
        1,
        "said once:\n{log}"
    );
    assert!(log.contains(&format!("still serving {first}")), "{log}");
    // S3 back, and a new publication: picked up.
    s3.resume();
    train("2");
    let second = server.wait_version(|v| v != first);
    assert!(server.log().contains("answers again"), "{}", server.log());
    let (status, after) = server.get("/v1/recommend?user=1&n=5");
    assert_eq!(
        (status, after["model_version"].as_str()),
        (200, Some(second.as_str()))
    );
}

#[test]
fn a_token_guards_the_api_but_not_the_probes() {
    let dir = temp_dir("serve-token");
    let Some((model_dir, _)) = ml_model(&dir, "model", &[]) else {
        return;
    };
    let token = dir.join("token");
    std::fs::write(&token, "s3cret-t0ken\n").unwrap();
    let server = Server::start(&["--model", s(&model_dir), "--token-file", s(&token)]);
    server.wait_version(|_| true);
    for header in [
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: s3cret-t0ken\r\n",
    ] {
        let (status, body) = server.request("GET", "/v1/recommend?user=1", header, "");
        assert_eq!(status, 401, "{header:?}: {body}");
    }
    let (status, _) = server.request(
        "GET",
        "/v1/recommend?user=1",
        "Authorization: Bearer s3cret-t0ken\r\n",
        "",
    );
    assert_eq!(status, 200);
    for open in ["/metrics", "/healthz", "/livez"] {
        assert_eq!(server.get(open).0, 200, "{open} needs no token");
    }
    assert!(
        !server.log().contains("s3cret"),
        "the token is never logged"
    );
}

#[test]
fn the_page_shows_a_users_recommendations_in_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI needs chromium (scripts/setup.sh --test)"
        );
        eprintln!("skipping: no chromium");
        return;
    };
    let dir = temp_dir("serve-page");
    let Some((model_dir, data)) = ml_model(&dir, "model", &[]) else {
        return;
    };
    let server = Server::start(&["--model", s(&model_dir), "--data", s(&data)]);
    server.wait_version(|_| true);
    let (_, answer) = server.get("/v1/recommend?user=1&n=10");
    let first = id_text(&answer["items"][0]["item"]);
    let profile = dir.join("chromium");
    let run = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", s(&profile)))
        .args(["--virtual-time-budget=10000", "--dump-dom"])
        .arg(format!("http://{}/?user=1", server.addr))
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&run.stdout);
    assert!(
        dom.contains("Recommendations (model, model v"),
        "{dom}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        dom.contains(&format!(">{first}</td>")),
        "{first} not in {dom}"
    );
    assert!(
        dom.contains("items the user has (left out of the list)"),
        "{dom}"
    );
}
