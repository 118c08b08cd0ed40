//! The admin server's view of routing: `/delegator.json` (why a name goes where it goes)
//! and `/dtabs` (each running router's dtab), Linkerd 1's dtab playground.
//!
//! Nothing here is on the request path: an explanation binds the name afresh, through the
//! same binder the routes use, and reports every rewrite with the dentry that made it and
//! how each branch ended.

use std::sync::Arc;

use http::StatusCode;
use mesh_core::dtab::{Dtab, Path};
use serde_json::{Value, json};

use crate::listener::ListenerCtx;
use crate::router::Router;

/// `/delegator.json?path=/svc/x[&dtab=…][&router=NAME]`: the explanation as JSON, or a
/// status and a message naming what was wrong with the query.
pub(crate) fn delegator(
    listeners: &[Arc<ListenerCtx>],
    query: Option<&str>,
) -> Result<Value, (StatusCode, String)> {
    let mut path = None;
    let mut dtab = None;
    let mut router = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "path" => path = Some(v.into_owned()),
            "dtab" => dtab = Some(v.into_owned()),
            "router" => router = Some(v.into_owned()),
            other => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {other:?}: expected path, dtab, router"),
                ));
            }
        }
    }
    let path = path.ok_or((
        StatusCode::BAD_REQUEST,
        "missing parameter: path (e.g. ?path=/svc/hello)".to_owned(),
    ))?;
    let path = Path::read(&path).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("invalid path {path:?}: {e}"),
        )
    })?;
    let extra = match dtab.as_deref() {
        Some(text) => {
            Dtab::read(text).map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid dtab: {e}")))?
        }
        None => Dtab::empty(),
    };
    let routers = routers(listeners);
    let chosen = match router.as_deref() {
        Some(name) => routers.iter().find(|r| r.name() == name).ok_or((
            StatusCode::NOT_FOUND,
            format!("no running router named {name:?}"),
        ))?,
        None => routers.first().ok_or((
            StatusCode::NOT_FOUND,
            "no router is running (set [outbound] router)".to_owned(),
        ))?,
    };
    let dtab = chosen.dtab().concat(&extra);
    Ok(json!({
        "router": chosen.name(),
        "path": path.to_string(),
        "dtab": dtab.to_string(),
        "delegation": chosen.explain(&path, &extra),
    }))
}

/// `/dtabs`: each running router's dtab in canonical form.
pub(crate) fn dtabs(listeners: &[Arc<ListenerCtx>]) -> Value {
    let map: serde_json::Map<String, Value> = routers(listeners)
        .iter()
        .map(|r| (r.name().to_owned(), Value::String(r.dtab().to_string())))
        .collect();
    Value::Object(map)
}

fn routers(listeners: &[Arc<ListenerCtx>]) -> Vec<&Arc<Router>> {
    listeners.iter().filter_map(|l| l.router.as_ref()).collect()
}
