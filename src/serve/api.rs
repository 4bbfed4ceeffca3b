//! The endpoints: what each reads from a request, what it answers, and the errors (JSON with
//! the reason, 400 for a bad request, 404 for a user or item the model does not know, 503 until
//! a model is loaded). Answers are those of `funksvd recommend`: the same scoring
//! (`Model::top_n_rows`, `similar_many`, through `batch` with the requests of the same moment),
//! the same items left out, the same fold-in.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::batch::{Ask, Exclude, Row};
use super::loaded::Loaded;
use super::App;
use crate::ids::Id;
use crate::mf::Scored;
use crate::recommend::{distinct_items, popular_for};

/// Items a POST may name.
const MAX_POSTED_ITEMS: usize = 10_000;

/// An error answer: its status and reason (`{"error": reason}`), for every error the server
/// gives.
pub struct Failure(pub StatusCode, pub String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad(reason: impl Into<String>) -> Failure {
    Failure(StatusCode::BAD_REQUEST, reason.into())
}

fn not_found(reason: impl Into<String>) -> Failure {
    Failure(StatusCode::NOT_FOUND, reason.into())
}

type Answer = Result<axum::Json<Value>, Failure>;
type Params = Query<HashMap<String, String>>;

/// The model being served, or 503.
fn current(app: &App) -> Result<Arc<Loaded>, Failure> {
    app.current().ok_or_else(|| {
        Failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "no model is loaded yet (see /healthz)".into(),
        )
    })
}

/// An id as JSON: a number for an integer id, else a string.
pub fn id_json(id: &Id) -> Value {
    match id {
        Id::Int(v) => json!(v),
        Id::Str(s) => json!(&**s),
    }
}

/// An id from JSON: a whole number or a string.
fn id_from_json(v: &Value, what: &str) -> Result<Id, Failure> {
    match v {
        Value::String(s) => Ok(Id::from_str_value(s)),
        Value::Number(n) => n
            .as_i64()
            .map(Id::Int)
            .ok_or_else(|| bad(format!("{what}: {n} is not a whole number or a string"))),
        other => Err(bad(format!(
            "{what}: {other} is not an id (a whole number or a string)"
        ))),
    }
}

fn required<'a>(q: &'a HashMap<String, String>, name: &str) -> Result<&'a str, Failure> {
    match q.get(name).map(|s| s.trim()) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(bad(format!("{name}: missing (give ?{name}=ID)"))),
    }
}

/// `n`: how many items, 1 to `--max-n` (10 if not given).
fn count(app: &App, v: Option<&Value>) -> Result<usize, Failure> {
    let n = match v {
        None | Some(Value::Null) => return Ok(10),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    match n {
        Some(n) if (1..=app.max_n as u64).contains(&n) => Ok(n as usize),
        _ => Err(bad(format!(
            "n: {} is not a whole number between 1 and {} (--max-n)",
            v.map_or(String::new(), |v| v.to_string()),
            app.max_n
        ))),
    }
}

fn query_count(app: &App, q: &HashMap<String, String>) -> Result<usize, Failure> {
    count(app, q.get("n").map(|s| Value::String(s.clone())).as_ref())
}

fn listed(loaded: &Loaded, list: &[Scored]) -> Value {
    Value::Array(
        list.iter()
            .map(|s| json!({"item": id_json(&loaded.model.item_ids[s.item as usize]), "score": s.score}))
            .collect(),
    )
}

/// The `n` best items for `ask`, scored with the other requests of the moment (`batch`).
async fn scored(
    app: &App,
    loaded: &Arc<Loaded>,
    n: usize,
    ask: Ask,
) -> Result<Vec<Scored>, Failure> {
    app.batcher
        .score(&app.metrics, loaded.clone(), n, ask)
        .await
        .ok_or_else(|| {
            Failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "scoring failed (see the server's log)".into(),
            )
        })
}

fn popular(loaded: &Loaded, n: usize, exclude: &[u32]) -> Vec<Scored> {
    popular_for(&loaded.popular, loaded.counts(), exclude, n)
}

/// `GET /v1/recommend?user=ID&n=10`: a user of the model (its row), or a user of `--data` the
/// model does not know (a row folded in from their interactions); their items left out.
pub async fn recommend_user(State(app): State<Arc<App>>, Query(q): Params) -> Answer {
    let loaded = current(&app)?;
    let n = query_count(&app, &q)?;
    let id = Id::from_str_value(required(&q, "user")?);
    let model = &loaded.model;
    let (list, source) = match model.user(&id) {
        Some(u) => {
            let ask = Ask::Top {
                row: Row::User(u),
                exclude: Exclude::SeenBy(u),
            };
            (scored(&app, &loaded, n, ask).await?, "model")
        }
        None => {
            let seen =
                loaded.seen.of_other(&id).ok_or_else(|| {
                    not_found(format!(
                    "user {id}: not in the model{} (for a visitor, POST /v1/recommend their items)",
                    if loaded.seen.with_data { " nor in --data" } else { "" }
                ))
                })?;
            match model.fold_in(&seen.items, &seen.values) {
                Some(row) => {
                    let ask = Ask::Top {
                        row: Row::Given(row),
                        exclude: Exclude::Given(seen.items.clone()),
                    };
                    (scored(&app, &loaded, n, ask).await?, "folded")
                }
                None => (popular(&loaded, n, &seen.items), "popular"),
            }
        }
    };
    Ok(axum::Json(json!({
        "user": id_json(&id), "source": source, "items": listed(&loaded, &list),
        "model_version": loaded.version,
    })))
}

/// `POST /v1/recommend` `{"items": [...], "weights"?: [...], "n"?: 10}`: a visitor's row
/// folded in from the items they touched (weights as training weighed events: 1 each if not
/// given), their top `n` without those items. Items the model does not know are left out and
/// listed; with none known, or equations without a solution, the popular items.
pub async fn recommend_items(State(app): State<Arc<App>>, body: Bytes) -> Answer {
    let loaded = current(&app)?;
    let body: Value = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "the body is not JSON ({e}); send {{\"items\": [...], \"n\": 10}}"
        ))
    })?;
    let Value::Object(fields) = &body else {
        return Err(bad(
            "the body must be a JSON object: {\"items\": [...], \"n\": 10}",
        ));
    };
    if let Some(key) = fields
        .keys()
        .find(|k| !["items", "weights", "n"].contains(&k.as_str()))
    {
        return Err(bad(format!("{key}: not a field (items, weights, n)")));
    }
    let n = count(&app, fields.get("n"))?;
    let Some(Value::Array(items)) = fields.get("items") else {
        return Err(bad("items: missing or not a list of ids"));
    };
    if items.is_empty() || items.len() > MAX_POSTED_ITEMS {
        return Err(bad(format!(
            "items: give 1 to {MAX_POSTED_ITEMS} ids, not {}",
            items.len()
        )));
    }
    let weights = match fields.get("weights") {
        None | Some(Value::Null) => vec![1.0f32; items.len()],
        Some(Value::Array(w)) if w.len() == items.len() => w
            .iter()
            .map(|v| match v.as_f64() {
                Some(x) if x.is_finite() && x >= 0.0 && x <= f32::MAX as f64 => Ok(x as f32),
                _ => Err(bad(format!(
                    "weights: {v} is not a finite number, 0 or more"
                ))),
            })
            .collect::<Result<Vec<f32>, Failure>>()?,
        Some(_) => return Err(bad("weights: must be a list of numbers, one per item")),
    };
    let model = &loaded.model;
    let mut pairs: Vec<(u32, f32)> = Vec::with_capacity(items.len());
    let mut unknown = Vec::new();
    for (v, &w) in items.iter().zip(&weights) {
        let id = id_from_json(v, "items")?;
        match model.item(&id) {
            Some(i) => pairs.push((i as u32, w)),
            None => unknown.push(id_json(&id)),
        }
    }
    distinct_items(&mut pairs);
    let known: Vec<u32> = pairs.iter().map(|p| p.0).collect();
    let values: Vec<f32> = pairs.iter().map(|p| p.1).collect();
    let (list, source) = match model.fold_in(&known, &values) {
        Some(row) => {
            let ask = Ask::Top {
                row: Row::Given(row),
                exclude: Exclude::Given(known),
            };
            (scored(&app, &loaded, n, ask).await?, "folded")
        }
        None => (popular(&loaded, n, &known), "popular"),
    };
    Ok(axum::Json(json!({
        "source": source, "items": listed(&loaded, &list), "unknown_items": unknown,
        "model_version": loaded.version,
    })))
}

fn item_of(loaded: &Loaded, q: &HashMap<String, String>) -> Result<(Id, usize), Failure> {
    let id = Id::from_str_value(required(q, "item")?);
    match loaded.model.item(&id) {
        Some(i) => Ok((id, i)),
        None => Err(not_found(format!("item {id}: not in the model"))),
    }
}

/// `GET /v1/similar?item=ID&n=10`: the items of most similar factors (cosine).
pub async fn similar(State(app): State<Arc<App>>, Query(q): Params) -> Answer {
    let loaded = current(&app)?;
    let n = query_count(&app, &q)?;
    let (id, i) = item_of(&loaded, &q)?;
    let list = scored(&app, &loaded, n, Ask::Similar { item: i as u32 }).await?;
    Ok(axum::Json(json!({
        "item": id_json(&id), "items": listed(&loaded, &list), "model_version": loaded.version,
    })))
}

/// `GET /v1/predict?user=ID&item=ID`: the model's prediction for the pair (clipped to the
/// training ratings' range, as `evaluate` scores it).
pub async fn predict(State(app): State<Arc<App>>, Query(q): Params) -> Answer {
    let loaded = current(&app)?;
    let user = Id::from_str_value(required(&q, "user")?);
    let (item, i) = item_of(&loaded, &q)?;
    let Some(u) = loaded.model.user(&user) else {
        return Err(not_found(format!("user {user}: not in the model")));
    };
    Ok(axum::Json(json!({
        "user": id_json(&user), "item": id_json(&item),
        "prediction": loaded.model.predict(Some(u), Some(i)), "model_version": loaded.version,
    })))
}

/// `GET /v1/history?user=ID`: the user's items in `--data` (what recommendations leave out).
pub async fn history(State(app): State<Arc<App>>, Query(q): Params) -> Answer {
    let loaded = current(&app)?;
    let id = Id::from_str_value(required(&q, "user")?);
    let model = &loaded.model;
    let (items, known) = match model.user(&id) {
        Some(u) => (loaded.seen.of_known(u), true),
        None => match loaded.seen.of_other(&id) {
            Some(s) => (s.items.as_slice(), false),
            None => {
                return Err(not_found(format!(
                    "user {id}: not in the model nor in --data"
                )))
            }
        },
    };
    let items: Vec<Value> = items
        .iter()
        .map(|&i| id_json(&model.item_ids[i as usize]))
        .collect();
    Ok(axum::Json(json!({
        "user": id_json(&id), "in_model": known, "with_data": loaded.seen.with_data, "items": items,
        "model_version": loaded.version,
    })))
}

/// `GET /healthz`: 200 once a model is served, 503 before.
pub async fn healthz(State(app): State<Arc<App>>) -> Response {
    match app.current() {
        Some(m) => axum::Json(json!({"status": "ok", "model_version": m.version})).into_response(),
        None => Failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "no model loaded yet".into(),
        )
        .into_response(),
    }
}

/// `GET /livez`: 200 while the server answers at all, model or not (the liveness probe: a pod
/// waiting for its first model must not be restarted for it).
pub async fn livez() -> Response {
    axum::Json(json!({"status": "alive"})).into_response()
}

/// `GET /metrics`: the Prometheus text format.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let text = app.metrics.render(app.current().as_deref());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `GET /`: the page for people (no build step: one file in the binary).
pub async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("page.html"),
    )
        .into_response()
}
