//! The proxy-wasm glue: host callbacks only, decisions live in the pure
//! modules. Compiled for `wasm32` only.
//!
//! No callback may panic (a panic kills the VM and, fail-closed, the
//! listener): host results are matched, never unwrapped. The per-request
//! host calls bypass the SDK's wrappers, which panic on statuses they do not
//! expect; those wrappers remain only at configure time and on the tick
//! (metrics, timer), where Envoy's answers are fixed by the ABI.

use std::cell::{Cell, RefCell};
use std::ptr::null_mut;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType, Status};

use crate::config::Config;
use crate::decimal::Decimal;
use crate::pod::{self, NODE_NAME_PATH, POD_NAME_ENV, PodSource, XDS_NODE_NAME_PATH};
use crate::state::{Flush, State, metrics};
use crate::{LOG_PREFIX, is_grpc_content_type};

/// Metrics flush and idle-eviction period.
const TICK: Duration = Duration::from_secs(1);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

// The per-request host calls. The SDK's own wrappers panic on any status
// they do not expect (Envoy answers BadArgument when a header map is not
// available), and a panic kills the VM; these map every failure to "nothing"
// instead, and allocate nothing themselves. The status comes back as a plain
// u32 (the same i32 in wasm as the SDK's `Status`): a code the enum lacks
// must not be undefined behaviour.
#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
    ) -> u32;
}

/// The ABI's `Ok`.
const STATUS_OK: u32 = Status::Ok as u32;

/// Takes ownership of a buffer the host returned with `status`.
fn host_buffer(status: u32, data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if status != STATUS_OK || data.is_null() {
        return None;
    }
    // SAFETY: on Ok the host allocated `size` bytes through the SDK's
    // `proxy_on_memory_allocate` (a Rust heap allocation of exactly `size`
    // bytes) and hands ownership to us; this is what the SDK itself does.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// Property lookup with a pre-serialized path (`\0`-separated): the SDK's
/// `get_property` also builds two vectors per call.
fn property(path: &[u8]) -> Option<Vec<u8>> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: `path` outlives the call; the host writes the out-pointers.
    let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    host_buffer(status, data, size)
}

/// One request header's value; None when absent or unavailable.
fn request_header(name: &str) -> Option<Vec<u8>> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: `name` outlives the call; the host writes the out-pointers.
    let status = unsafe {
        proxy_get_header_map_value(
            MapType::HttpRequestHeaders,
            name.as_ptr(),
            name.len(),
            &mut data,
            &mut size,
        )
    };
    host_buffer(status, data, size)
}

/// Sets (replaces, never appends) a response header, or removes it. A map
/// the host cannot give us leaves the response as it is.
fn set_response_header(name: &str, value: Option<&[u8]>) {
    // SAFETY: `name` and `value` outlive the calls; the host only reads them.
    let _ = unsafe {
        match value {
            Some(value) => proxy_replace_header_map_value(
                MapType::HttpResponseHeaders,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            ),
            None => proxy_remove_header_map_value(
                MapType::HttpResponseHeaders,
                name.as_ptr(),
                name.len(),
            ),
        }
    };
}

/// `["connection","id"]`: 8-byte little-endian u64.
fn connection_id() -> Option<u64> {
    let bytes = property(b"connection\0id")?;
    <[u8; 8]>::try_from(bytes.as_slice())
        .ok()
        .map(u64::from_le_bytes)
}

/// Immutable per-configuration settings, plus the mutable counting state.
struct Shared {
    pod: String,
    pod_header: String,
    connection_id_header: String,
    connection_requests_header: String,
    tag_all_http: bool,
    state: RefCell<State>,
    warned_no_connection_id: Cell<bool>,
}

#[derive(Clone, Copy)]
struct Metrics {
    requests_tagged: u32,
    requests_skipped: u32,
    connections_tracked: u32,
    connections_evicted: u32,
    connections_expired: u32,
}

impl Metrics {
    fn define() -> Result<Metrics, String> {
        let define = |kind, name: &str| {
            hostcalls::define_metric(kind, name).map_err(|_| format!("cannot define metric {name}"))
        };
        Ok(Metrics {
            requests_tagged: define(MetricType::Counter, metrics::REQUESTS_TAGGED)?,
            requests_skipped: define(MetricType::Counter, metrics::REQUESTS_SKIPPED)?,
            connections_tracked: define(MetricType::Gauge, metrics::CONNECTIONS_TRACKED)?,
            connections_evicted: define(MetricType::Counter, metrics::CONNECTIONS_EVICTED)?,
            connections_expired: define(MetricType::Counter, metrics::CONNECTIONS_EXPIRED)?,
        })
    }

    fn apply(&self, flush: Flush) {
        let deltas = [
            (self.requests_tagged, flush.requests_tagged as i64),
            (self.requests_skipped, flush.requests_skipped as i64),
            (self.connections_evicted, flush.connections_evicted as i64),
            (self.connections_expired, flush.connections_expired as i64),
            (self.connections_tracked, flush.connections_tracked_delta),
        ];
        for (id, delta) in deltas {
            // Envoy refuses non-positive counter increments.
            if delta != 0 {
                let _ = hostcalls::increment_metric(id, delta);
            }
        }
    }
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
    metrics: Option<Metrics>,
    started: Option<SystemTime>,
}

impl Root {
    fn flush(&self, last: bool) {
        let (Some(shared), Some(metrics)) = (&self.shared, &self.metrics) else {
            return;
        };
        let flush = {
            let Ok(mut state) = shared.state.try_borrow_mut() else {
                return;
            };
            if last {
                state.take_final_flush()
            } else {
                state.take_flush()
            }
        };
        if !flush.is_empty() {
            metrics.apply(flush);
        }
    }
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        self.flush(true);
        true
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let prefix = LOG_PREFIX;
        let raw = if plugin_configuration_size == 0 {
            None
        } else {
            hostcalls::get_buffer(
                proxy_wasm::types::BufferType::PluginConfiguration,
                0,
                plugin_configuration_size,
            )
            .ok()
            .flatten()
        };
        let config = match Config::parse(raw.as_deref().unwrap_or_default()) {
            Ok(config) => config,
            Err(err) => {
                error!("{prefix}: invalid pluginConfig, filter not started: {err}");
                return false;
            }
        };

        let resolved = pod::resolve(|source| match source {
            PodSource::Config => config.pod_name.clone().map(String::into_bytes),
            PodSource::XdsNodeMetadata => property(XDS_NODE_NAME_PATH),
            PodSource::NodeMetadata => property(NODE_NAME_PATH),
            PodSource::Env => std::env::var_os(POD_NAME_ENV).map(|v| v.into_encoded_bytes()),
            PodSource::Placeholder => None,
        });
        for (source, why) in &resolved.rejected {
            warn!(
                "{prefix}: ignoring pod name from {}: {why}",
                source.describe()
            );
        }
        if resolved.source == PodSource::Placeholder {
            warn!(
                "{prefix}: pod name not found (pluginConfig pod_name, node metadata NAME, env \
                 POD_NAME via vmConfig.env valueFrom: HOST); responses are tagged \"{}\"",
                resolved.name
            );
        }

        let metrics = match Metrics::define() {
            Ok(metrics) => metrics,
            Err(why) => {
                error!("{prefix}: {why}, filter not started");
                return false;
            }
        };

        info!(
            "{prefix}: started: pod=\"{}\" (from {}) pod_header={} connection_id_header={} \
             connection_requests_header={} tag_all_http={} max_tracked_connections={} \
             idle_timeout_seconds={}",
            resolved.name,
            resolved.source.describe(),
            config.pod_header,
            config.connection_id_header,
            config.connection_requests_header,
            config.tag_all_http,
            config.max_tracked_connections,
            config.idle_timeout_seconds,
        );

        // A reconfigured root context hands over its gauge share first.
        self.flush(true);
        let state = RefCell::new(State::new(&config));
        self.shared = Some(Rc::new(Shared {
            pod: resolved.name,
            pod_header: config.pod_header,
            connection_id_header: config.connection_id_header,
            connection_requests_header: config.connection_requests_header,
            tag_all_http: config.tag_all_http,
            state,
            warned_no_connection_id: Cell::new(false),
        }));
        self.metrics = Some(metrics);
        self.started = hostcalls::get_current_time().ok();
        if hostcalls::set_tick_period(TICK).is_err() {
            error!("{prefix}: cannot set the tick period, filter not started");
            return false;
        }
        true
    }

    fn on_tick(&mut self) {
        if let (Some(shared), Some(started)) = (&self.shared, self.started) {
            let elapsed = hostcalls::get_current_time()
                .ok()
                .and_then(|now| now.duration_since(started).ok())
                .unwrap_or_default();
            let now = u32::try_from(elapsed.as_secs()).unwrap_or(u32::MAX);
            if let Ok(mut state) = shared.state.try_borrow_mut() {
                state.tick(now);
            }
        }
        self.flush(false);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            shared: self.shared.clone(),
            tag: Tag::None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

#[derive(Clone, Copy)]
enum Tag {
    /// Not (yet) decided to tag: no request headers seen, or not gRPC.
    None,
    /// Tag the pod only: the host gave no connection id.
    Pod,
    /// Tag everything.
    Connection { id: u64, requests: u64 },
}

struct Http {
    shared: Option<Rc<Shared>>,
    tag: Tag,
}

impl Context for Http {}

// Only the callbacks implemented here (and the root's) stay exported from
// the module (`WASM_EXPORTS` in the Makefile): Envoy calls every exported
// callback on every stream, so one the filter leaves at the SDK default
// would cost a call into V8 for nothing. Implement another callback, add
// its `proxy_on_*` export there, or Envoy never calls it.
impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = &self.shared else {
            return Action::Continue;
        };
        if !shared.tag_all_http {
            let content_type = request_header("content-type");
            if !is_grpc_content_type(content_type.as_deref()) {
                if let Ok(mut state) = shared.state.try_borrow_mut() {
                    state.skipped();
                }
                return Action::Continue;
            }
        }
        self.tag = match connection_id() {
            Some(id) => match shared.state.try_borrow_mut() {
                Ok(mut state) => Tag::Connection {
                    id,
                    requests: state.count_request(id),
                },
                Err(_) => Tag::Pod,
            },
            None => {
                if !shared.warned_no_connection_id.replace(true) {
                    warn!(
                        "{}: property connection.id unavailable; tagging the pod only",
                        LOG_PREFIX
                    );
                }
                Tag::Pod
            }
        };
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = &self.shared else {
            return Action::Continue;
        };
        // Set, not append: an app-supplied header of the same name is
        // overwritten (or removed), never duplicated.
        let set = set_response_header;
        match self.tag {
            Tag::None => return Action::Continue,
            Tag::Pod => {
                set(&shared.pod_header, Some(shared.pod.as_bytes()));
                set(&shared.connection_id_header, None);
                set(&shared.connection_requests_header, None);
            }
            Tag::Connection { id, requests } => {
                set(&shared.pod_header, Some(shared.pod.as_bytes()));
                set(
                    &shared.connection_id_header,
                    Some(Decimal::new(id).as_bytes()),
                );
                set(
                    &shared.connection_requests_header,
                    Some(Decimal::new(requests).as_bytes()),
                );
            }
        }
        if let Ok(mut state) = shared.state.try_borrow_mut() {
            state.tagged();
        }
        Action::Continue
    }
}
