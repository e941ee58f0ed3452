//! Calls from a script to the world outside the sandbox: `fetch(url, init)`
//! and `context.app.fetch(path, init)`, both backed by a [`Host`] that runs
//! on the process's main runtime.
//!
//! A call is a native function that hands the request to the host's runtime
//! (`Handle::spawn`) and returns a promise; the promise settles when the task
//! answers. The run counts its calls in flight, so that the settle loop waits
//! for them instead of calling the script's promise one that never settles.
//! A run that ends (its deadline, or the caller gone) drops its futures, and
//! with them aborts the tasks on the host's runtime.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use rquickjs::{Ctx, Exception, Function, Object, Promise, Value};

use super::{Bridge, HostRequest, HostTarget};

/// The glue between the native call and the script: shapes the options and
/// the response the way `fetch` users expect. Evaluated once per run; the
/// native function reaches no global, only this closure.
const PRELUDE: &str = r#"(function (call) {
  function options(init) {
    if (init === undefined || init === null) init = {};
    if (typeof init !== "object") throw new TypeError("fetch options must be an object");
    var headers = {};
    var given = init.headers || {};
    Object.keys(given).forEach(function (name) {
      headers[String(name).toLowerCase()] = String(given[name]);
    });
    var body = init.body;
    if (body !== undefined && body !== null && typeof body !== "string") {
      body = JSON.stringify(body);
      if (!("content-type" in headers)) headers["content-type"] = "application/json";
    }
    return JSON.stringify({
      method: init.method === undefined ? "GET" : String(init.method).toUpperCase(),
      headers: headers,
      body: body === undefined || body === null ? null : body
    });
  }
  function response(text) {
    var answer = JSON.parse(text);
    var headers = answer.headers;
    Object.defineProperty(headers, "get", {
      value: function (name) {
        var value = headers[String(name).toLowerCase()];
        return value === undefined ? null : value;
      }
    });
    return {
      status: answer.status,
      ok: answer.status >= 200 && answer.status < 300,
      headers: headers,
      body: answer.body,
      text: function () { return answer.body; },
      json: function () { return JSON.parse(answer.body); }
    };
  }
  // Bad arguments reject, as they do for the standard fetch, rather
  // than throw.
  function start(kind, target, init) {
    try {
      return call(kind, String(target), options(init)).then(response);
    } catch (error) {
      return Promise.reject(error);
    }
  }
  globalThis.fetch = function fetch(url, init) { return start(1, url, init); };
  return {
    fetch: function fetch(path, init) { return start(0, path, init); }
  };
})"#;

/// Calls of one run that have not answered yet.
#[derive(Default)]
pub(super) struct Calls {
    in_flight: Cell<usize>,
    made: Cell<usize>,
}

impl Calls {
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.get()
    }
}

/// One call in flight; counted out when dropped, however it ends.
struct Flying(Rc<Calls>);

impl Drop for Flying {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get() - 1);
    }
}

/// Aborts a host task when the run lets go of it unfinished.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Installs the global `fetch` and returns the `app` object (with its
/// `fetch`) to put on the script's context.
pub(super) fn install<'js>(
    ctx: &Ctx<'js>,
    bridge: Arc<Bridge>,
    calls: Rc<Calls>,
) -> rquickjs::Result<Object<'js>> {
    let native = Function::new(
        ctx.clone(),
        move |ctx: Ctx<'js>, kind: i32, target: String, init: String| {
            call(&ctx, &bridge, &calls, kind, target, &init)
        },
    )?;
    let glue: Function = ctx.eval(PRELUDE)?;
    glue.call((native,))
}

/// Starts one call and returns its promise.
fn call<'js>(
    ctx: &Ctx<'js>,
    bridge: &Arc<Bridge>,
    calls: &Rc<Calls>,
    kind: i32,
    target: String,
    init: &str,
) -> rquickjs::Result<Promise<'js>> {
    let made = calls.made.get() + 1;
    calls.made.set(made);
    let refused = if made > bridge.max_calls {
        Some(format!(
            "too many calls: a run may make at most {}",
            bridge.max_calls
        ))
    } else {
        None
    };
    let request = serde_json::from_str::<Init>(init).map(|init| HostRequest {
        target: if kind == 0 {
            HostTarget::App
        } else {
            HostTarget::Web
        },
        url: target,
        method: init.method,
        headers: init.headers.into_iter().collect(),
        body: init.body,
    });
    let task = match (refused, request) {
        (Some(reason), _) => Err(reason),
        (None, Err(e)) => Err(format!("bad fetch options: {e}")),
        (None, Ok(request)) => Ok(AbortOnDrop(
            bridge.runtime.spawn(bridge.host.fetch(request)),
        )),
    };
    calls.in_flight.set(calls.in_flight.get() + 1);
    let flying = Flying(calls.clone());
    let ctx_in = ctx.clone();
    let answer = async move {
        let _flying = flying;
        let outcome = match task {
            Err(reason) => Err(reason),
            Ok(mut task) => match (&mut task.0).await {
                Ok(outcome) => outcome,
                Err(_) => Err("the call was cancelled".to_owned()),
            },
        };
        match outcome {
            // Made while the answer still holds its share of the budget.
            Ok(response) => Ok(serde_json::json!({
                "status": response.status,
                "headers": response.headers,
                "body": response.body,
            })
            .to_string()),
            Err(reason) => Err(Exception::throw_message(&ctx_in, &reason)),
        }
    };
    Promise::wrap_future(ctx, answer)
}

/// The options the prelude passes, as JSON.
#[derive(serde::Deserialize)]
struct Init {
    method: String,
    headers: std::collections::BTreeMap<String, String>,
    body: Option<String>,
}

/// Puts `app` on the last argument, when that is an object (the context).
pub(super) fn attach<'js>(args: &[Value<'js>], app: Object<'js>) -> rquickjs::Result<()> {
    if let Some(context) = args.last().and_then(Value::as_object) {
        context.set("app", app)?;
    }
    Ok(())
}
