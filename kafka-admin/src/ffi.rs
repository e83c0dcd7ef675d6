//! The librdkafka C calls behind the crate's functions: every `unsafe` block of the crate.
//!
//! One admin request is a [`Request`] (reply queue, options, answer event) plus the C objects
//! it is made from in [`Owned`]; both free what they hold on every path. librdkafka copies what
//! it keeps from the objects passed in, and what it answers belongs to the event, so everything
//! read from an answer is copied into Rust values before the `Request` is dropped.

use std::ffi::{CStr, CString, c_char, c_int};
use std::marker::PhantomData;
use std::ptr;
use std::time::{Duration, Instant};

use rdkafka::admin::AdminClient;
use rdkafka::bindings as rd;
use rdkafka::client::ClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::{AclOperation, AclPermission, AdminError, ConfigOp, PatternType, TopicAcl};

use rd::rd_kafka_AclOperation_t as RdOp;
use rd::rd_kafka_AclPermissionType_t as RdPermission;
use rd::rd_kafka_ResourcePatternType_t as RdPattern;

const NO_ERROR: rd::rd_kafka_resp_err_t = rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR;

/// How much longer than the request timeout to wait for the answer: librdkafka answers a
/// request that timed out itself, so this only matters if it is stuck.
const REPLY_GRACE: Duration = Duration::from_secs(5);

/// Size of the buffers librdkafka writes its refusals into.
const ERRSTR_LEN: usize = 512;

/// One admin request's reply queue, options and answer, freed on every path. Borrows the
/// client: the queue must go before the client's handle does.
struct Request<'a> {
    op: &'static str,
    rk: *mut rd::rd_kafka_t,
    queue: *mut rd::rd_kafka_queue_t,
    options: *mut rd::rd_kafka_AdminOptions_t,
    event: *mut rd::rd_kafka_event_t,
    timeout: Duration,
    _client: PhantomData<&'a ()>,
}

impl<'a> Request<'a> {
    /// A request of `kind` on `client` that the cluster must answer within `timeout`.
    fn new<C: ClientContext>(
        client: &'a AdminClient<C>,
        kind: rd::rd_kafka_admin_op_t,
        op: &'static str,
        timeout: Duration,
    ) -> Result<Self, AdminError> {
        let rk = client.inner().native_ptr();
        let mut req = Request {
            op,
            rk,
            queue: ptr::null_mut(),
            options: ptr::null_mut(),
            event: ptr::null_mut(),
            timeout,
            _client: PhantomData,
        };
        // SAFETY: `rk` is the live handle of `client`, borrowed for as long as `req` lives; the
        // queue and options made here are freed by `req`'s Drop, after which `rk` may go.
        unsafe {
            req.queue = rd::rd_kafka_queue_new(rk);
            req.options = rd::rd_kafka_AdminOptions_new(rk, kind);
        }
        if req.queue.is_null() || req.options.is_null() {
            return Err(AdminError::Rejected {
                op,
                message: "librdkafka could not allocate the request".into(),
            });
        }
        let mut errstr = [0 as c_char; ERRSTR_LEN];
        // SAFETY: `options` is live (checked above); `errstr` is writable for its length.
        let err = unsafe {
            rd::rd_kafka_AdminOptions_set_request_timeout(
                req.options,
                millis(timeout),
                errstr.as_mut_ptr(),
                errstr.len(),
            )
        };
        if err != NO_ERROR {
            return Err(AdminError::Rejected {
                op,
                message: format!("request timeout {timeout:?}: {}", buffer_text(&errstr)),
            });
        }
        Ok(req)
    }

    /// Waits for the answer and checks the request's own error. The event stays owned by the
    /// request: whatever is read from it must be copied before the request is dropped.
    fn wait(&mut self) -> Result<*mut rd::rd_kafka_event_t, AdminError> {
        let waited = self.timeout.saturating_add(REPLY_GRACE);
        // SAFETY: `queue` is live; the event returned (or null) is ours and freed in Drop.
        self.event = unsafe { rd::rd_kafka_queue_poll(self.queue, millis(waited)) };
        if self.event.is_null() {
            return Err(AdminError::NoAnswer {
                op: self.op,
                waited,
            });
        }
        // SAFETY: `event` is live; its error string (null or NUL-terminated) belongs to it and
        // is copied by `text` right away.
        let (code, message) = unsafe {
            let code = rd::rd_kafka_event_error(self.event);
            (code, text(rd::rd_kafka_event_error_string(self.event)))
        };
        if code != NO_ERROR {
            return Err(failed(self.op, code, message));
        }
        Ok(self.event)
    }

    /// The error for an answer of another kind than this request's result.
    fn unexpected_event(&self) -> AdminError {
        // SAFETY: called only after `wait` succeeded: `event` is live; its name is a static
        // string in librdkafka.
        let name = unsafe { text(rd::rd_kafka_event_name(self.event)) };
        AdminError::Unexpected {
            op: self.op,
            message: format!("an event of type {name}"),
        }
    }
}

impl Drop for Request<'_> {
    fn drop(&mut self) {
        // SAFETY: each pointer is null or was returned by its librdkafka constructor and is
        // freed exactly once, here, while the client (borrowed by the request) is still live.
        unsafe {
            if !self.event.is_null() {
                rd::rd_kafka_event_destroy(self.event);
            }
            if !self.options.is_null() {
                rd::rd_kafka_AdminOptions_destroy(self.options);
            }
            if !self.queue.is_null() {
                rd::rd_kafka_queue_destroy(self.queue);
            }
        }
    }
}

/// C objects of one kind that a request is made from (ACL bindings, config resources), freed
/// together when dropped. librdkafka copies them when the request is sent.
struct Owned<T> {
    items: Vec<*mut T>,
    destroy: unsafe extern "C" fn(*mut T),
}

impl<T> Owned<T> {
    fn new(destroy: unsafe extern "C" fn(*mut T)) -> Self {
        Owned {
            items: Vec::new(),
            destroy,
        }
    }

    /// Takes ownership of `item`, a live object `destroy` frees, unless it is null.
    fn push(&mut self, item: *mut T) -> bool {
        if item.is_null() {
            return false;
        }
        self.items.push(item);
        true
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        for item in self.items.drain(..) {
            // SAFETY: `push` only keeps non-null objects made by the constructor that matches
            // `destroy`; each is freed once, here.
            unsafe { (self.destroy)(item) }
        }
    }
}

/// Milliseconds for librdkafka, saturating at what a C int holds.
fn millis(d: Duration) -> c_int {
    c_int::try_from(d.as_millis()).unwrap_or(c_int::MAX)
}

/// Copies a C string librdkafka returned; null reads as empty.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string live for the call.
unsafe fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the caller's contract.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The text librdkafka wrote into an `errstr` buffer.
fn buffer_text(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// librdkafka's name of an error code, e.g. `SECURITY_DISABLED`.
fn code_name(code: rd::rd_kafka_resp_err_t) -> String {
    // SAFETY: rd_kafka_err2name returns a static string for every code (a placeholder for
    // codes it does not know).
    unsafe { text(rd::rd_kafka_err2name(code)) }
}

/// librdkafka's text for an error code, e.g. `Broker: Security features are disabled`.
fn default_message(code: rd::rd_kafka_resp_err_t) -> String {
    // SAFETY: rd_kafka_err2str returns a static string for every code.
    unsafe { text(rd::rd_kafka_err2str(code)) }
}

fn failed(op: &'static str, code: rd::rd_kafka_resp_err_t, message: String) -> AdminError {
    let message = if message.is_empty() {
        default_message(code)
    } else {
        message
    };
    AdminError::Failed {
        op,
        code: RDKafkaErrorCode::from(code),
        code_name: code_name(code),
        message,
    }
}

/// One item's error as the results carry it: `message (NAME)`.
///
/// # Safety
/// `err` is a live `rd_kafka_error_t`.
unsafe fn item_error(err: *const rd::rd_kafka_error_t) -> String {
    // SAFETY: the caller's contract; both strings belong to `err` and are copied here.
    unsafe {
        format!(
            "{} ({})",
            text(rd::rd_kafka_error_string(err)),
            text(rd::rd_kafka_error_name(err))
        )
    }
}

fn cstring(op: &'static str, s: &str) -> Result<CString, AdminError> {
    CString::new(s).map_err(|_| AdminError::NulByte {
        op,
        value: s.to_owned(),
    })
}

// ---------------------------------------------------------------------------------------------
// ACLs

fn rd_operation(op: AclOperation) -> RdOp {
    match op {
        AclOperation::Any => RdOp::RD_KAFKA_ACL_OPERATION_ANY,
        AclOperation::All => RdOp::RD_KAFKA_ACL_OPERATION_ALL,
        AclOperation::Read => RdOp::RD_KAFKA_ACL_OPERATION_READ,
        AclOperation::Write => RdOp::RD_KAFKA_ACL_OPERATION_WRITE,
        AclOperation::Create => RdOp::RD_KAFKA_ACL_OPERATION_CREATE,
        AclOperation::Delete => RdOp::RD_KAFKA_ACL_OPERATION_DELETE,
        AclOperation::Alter => RdOp::RD_KAFKA_ACL_OPERATION_ALTER,
        AclOperation::Describe => RdOp::RD_KAFKA_ACL_OPERATION_DESCRIBE,
        AclOperation::ClusterAction => RdOp::RD_KAFKA_ACL_OPERATION_CLUSTER_ACTION,
        AclOperation::DescribeConfigs => RdOp::RD_KAFKA_ACL_OPERATION_DESCRIBE_CONFIGS,
        AclOperation::AlterConfigs => RdOp::RD_KAFKA_ACL_OPERATION_ALTER_CONFIGS,
        AclOperation::IdempotentWrite => RdOp::RD_KAFKA_ACL_OPERATION_IDEMPOTENT_WRITE,
        AclOperation::Unknown => RdOp::RD_KAFKA_ACL_OPERATION_UNKNOWN,
    }
}

fn operation(op: RdOp) -> AclOperation {
    match op {
        RdOp::RD_KAFKA_ACL_OPERATION_ANY => AclOperation::Any,
        RdOp::RD_KAFKA_ACL_OPERATION_ALL => AclOperation::All,
        RdOp::RD_KAFKA_ACL_OPERATION_READ => AclOperation::Read,
        RdOp::RD_KAFKA_ACL_OPERATION_WRITE => AclOperation::Write,
        RdOp::RD_KAFKA_ACL_OPERATION_CREATE => AclOperation::Create,
        RdOp::RD_KAFKA_ACL_OPERATION_DELETE => AclOperation::Delete,
        RdOp::RD_KAFKA_ACL_OPERATION_ALTER => AclOperation::Alter,
        RdOp::RD_KAFKA_ACL_OPERATION_DESCRIBE => AclOperation::Describe,
        RdOp::RD_KAFKA_ACL_OPERATION_CLUSTER_ACTION => AclOperation::ClusterAction,
        RdOp::RD_KAFKA_ACL_OPERATION_DESCRIBE_CONFIGS => AclOperation::DescribeConfigs,
        RdOp::RD_KAFKA_ACL_OPERATION_ALTER_CONFIGS => AclOperation::AlterConfigs,
        RdOp::RD_KAFKA_ACL_OPERATION_IDEMPOTENT_WRITE => AclOperation::IdempotentWrite,
        RdOp::RD_KAFKA_ACL_OPERATION_UNKNOWN | RdOp::RD_KAFKA_ACL_OPERATION__CNT => {
            AclOperation::Unknown
        }
    }
}

fn rd_permission(p: AclPermission) -> RdPermission {
    match p {
        AclPermission::Allow => RdPermission::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
        AclPermission::Deny => RdPermission::RD_KAFKA_ACL_PERMISSION_TYPE_DENY,
    }
}

/// `None` for the filter-only ANY and for what librdkafka could not read.
fn permission(p: RdPermission) -> Option<AclPermission> {
    match p {
        RdPermission::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW => Some(AclPermission::Allow),
        RdPermission::RD_KAFKA_ACL_PERMISSION_TYPE_DENY => Some(AclPermission::Deny),
        RdPermission::RD_KAFKA_ACL_PERMISSION_TYPE_ANY
        | RdPermission::RD_KAFKA_ACL_PERMISSION_TYPE_UNKNOWN
        | RdPermission::RD_KAFKA_ACL_PERMISSION_TYPE__CNT => None,
    }
}

fn rd_pattern(p: PatternType) -> RdPattern {
    match p {
        PatternType::Literal => RdPattern::RD_KAFKA_RESOURCE_PATTERN_LITERAL,
        PatternType::Prefixed => RdPattern::RD_KAFKA_RESOURCE_PATTERN_PREFIXED,
        PatternType::Match => RdPattern::RD_KAFKA_RESOURCE_PATTERN_MATCH,
        PatternType::Any => RdPattern::RD_KAFKA_RESOURCE_PATTERN_ANY,
    }
}

/// `None` for what librdkafka could not read.
fn pattern(p: RdPattern) -> Option<PatternType> {
    match p {
        RdPattern::RD_KAFKA_RESOURCE_PATTERN_LITERAL => Some(PatternType::Literal),
        RdPattern::RD_KAFKA_RESOURCE_PATTERN_PREFIXED => Some(PatternType::Prefixed),
        RdPattern::RD_KAFKA_RESOURCE_PATTERN_MATCH => Some(PatternType::Match),
        RdPattern::RD_KAFKA_RESOURCE_PATTERN_ANY => Some(PatternType::Any),
        RdPattern::RD_KAFKA_RESOURCE_PATTERN_UNKNOWN
        | RdPattern::RD_KAFKA_RESOURCE_PATTERN_TYPE__CNT => None,
    }
}

const DESCRIBE_ACLS: &str = "describing ACLs";

pub(crate) fn describe_topic_acls<C: ClientContext>(
    client: &AdminClient<C>,
    timeout: Duration,
) -> Result<Vec<TopicAcl>, AdminError> {
    let started = Instant::now();
    let (acls, answered) = list_topic_acls(client, timeout)?;
    if answered == 0 {
        // The probes share what is left of the caller's timeout (at least a second each).
        let left = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(1));
        explain_empty_listing(client, left)?;
    }
    Ok(acls)
}

/// DescribeAcls as librdkafka answers it (no bindings also when the broker refused), with the
/// number of bindings answered, including those left out.
fn list_topic_acls<C: ClientContext>(
    client: &AdminClient<C>,
    timeout: Duration,
) -> Result<(Vec<TopicAcl>, usize), AdminError> {
    const OP: &str = DESCRIBE_ACLS;
    let mut req = Request::new(
        client,
        rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBEACLS,
        OP,
        timeout,
    )?;
    let mut filter = Owned::new(rd::rd_kafka_AclBinding_destroy);
    let mut errstr = [0 as c_char; ERRSTR_LEN];
    // SAFETY: null name, principal and host mean "any" in a filter; `errstr` is writable for
    // its length; the filter made is freed by `filter`.
    let made = filter.push(unsafe {
        rd::rd_kafka_AclBindingFilter_new(
            rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
            ptr::null(),
            RdPattern::RD_KAFKA_RESOURCE_PATTERN_ANY,
            ptr::null(),
            ptr::null(),
            RdOp::RD_KAFKA_ACL_OPERATION_ANY,
            RdPermission::RD_KAFKA_ACL_PERMISSION_TYPE_ANY,
            errstr.as_mut_ptr(),
            errstr.len(),
        )
    });
    if !made {
        return Err(AdminError::Rejected {
            op: OP,
            message: buffer_text(&errstr),
        });
    }
    // SAFETY: `rk`, the filter, options and queue are live; librdkafka copies the filter.
    unsafe { rd::rd_kafka_DescribeAcls(req.rk, filter.items[0], req.options, req.queue) };
    let event = req.wait()?;
    // SAFETY: `event` is live; the result, its array and the bindings in it belong to the
    // event, which `req` keeps until after every field is copied below. librdkafka maps
    // enum values it does not know to UNKNOWN before storing them, so the enums read back
    // are in range.
    unsafe {
        let result = rd::rd_kafka_event_DescribeAcls_result(event);
        if result.is_null() {
            return Err(req.unexpected_event());
        }
        let mut n = 0usize;
        let arr = rd::rd_kafka_DescribeAcls_result_acls(result, &mut n);
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let b = *arr.add(i);
            let restype = rd::rd_kafka_AclBinding_restype(b);
            let topic = text(rd::rd_kafka_AclBinding_name(b));
            let rd_pat = rd::rd_kafka_AclBinding_resource_pattern_type(b);
            let rd_perm = rd::rd_kafka_AclBinding_permission_type(b);
            let (Some(pattern), Some(permission)) = (pattern(rd_pat), permission(rd_perm)) else {
                tracing::warn!(topic, pattern = ?rd_pat, permission = ?rd_perm, "leaving out an ACL binding whose pattern type or permission librdkafka cannot read");
                continue;
            };
            if restype != rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC {
                // The filter asks for topics only; a broker answering more is not trusted.
                tracing::warn!(topic, resource_type = ?restype, "leaving out an ACL binding on another resource than a topic");
                continue;
            }
            out.push(TopicAcl {
                topic,
                pattern,
                principal: text(rd::rd_kafka_AclBinding_principal(b)),
                host: text(rd::rd_kafka_AclBinding_host(b)),
                operation: operation(rd::rd_kafka_AclBinding_operation(b)),
                permission,
            });
        }
        Ok((out, n))
    }
}

/// Turns an empty DescribeAcls answer into the error the broker sent, if it sent one.
///
/// librdkafka (2.12.1, bundled by rdkafka-sys 4.10) drops the top-level error of a DescribeAcls
/// response: `rd_kafka_DescribeAclsResponse_parse` reads the code, then returns success with
/// no bindings. So "no authorizer" (SECURITY_DISABLED) and "not allowed to look"
/// (CLUSTER_AUTHORIZATION_FAILED) both read as "no ACLs", which mean opposite things to a
/// caller syncing them. A broker sends bindings only with success, so only an empty list is
/// ambiguous; two requests tell the cases apart:
///
/// 1. DescribeCluster with the caller's authorized operations on the cluster: DescribeAcls
///    needs DESCRIBE there, and a broker with an authorizer lists exactly what it allows.
/// 2. The broker's `authorizer.class.name` (DescribeConfigs): empty means no authorizer. The
///    broker may refuse to tell (DESCRIBE_CONFIGS is not DESCRIBE), but only an authorizer
///    refuses anything, so a refusal means the empty list was an answer.
fn explain_empty_listing<C: ClientContext>(
    client: &AdminClient<C>,
    timeout: Duration,
) -> Result<(), AdminError> {
    const OP: &str = "describing ACLs (asking the cluster why it listed none)";
    let cluster = describe_cluster(client, OP, timeout)?;
    if let Some(ops) = &cluster.authorized
        && !ops
            .iter()
            .any(|op| matches!(op, AclOperation::Describe | AclOperation::All))
    {
        let code = rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED;
        return Err(failed(
            DESCRIBE_ACLS,
            code,
            format!(
                "{}: the client's principal may not DESCRIBE the CLUSTER, which listing ACLs needs",
                default_message(code)
            ),
        ));
    }
    let Some(&node) = cluster.nodes.first() else {
        return Err(AdminError::Unexpected {
            op: OP,
            message: "DescribeCluster named no broker".into(),
        });
    };
    match broker_config(client, OP, node, "authorizer.class.name", timeout)? {
        Ok(class) if class.as_deref().unwrap_or("").trim().is_empty() => {
            let code = rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_SECURITY_DISABLED;
            Err(failed(
                DESCRIBE_ACLS,
                code,
                format!(
                    "{}: broker {node} has no authorizer (authorizer.class.name is empty)",
                    default_message(code)
                ),
            ))
        }
        Ok(_) => Ok(()),
        Err((code, _)) if is_authorization_error(code) => Ok(()),
        Err((code, message)) => Err(failed(OP, code, message)),
    }
}

fn is_authorization_error(code: rd::rd_kafka_resp_err_t) -> bool {
    use rd::rd_kafka_resp_err_t::*;
    matches!(
        code,
        RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED
            | RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED
            | RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED
    )
}

/// What DescribeCluster says: the brokers' ids and, when the broker tells, the operations
/// the client's principal may perform on the cluster.
#[derive(Debug)]
struct ClusterView {
    nodes: Vec<i32>,
    authorized: Option<Vec<AclOperation>>,
}

fn describe_cluster<C: ClientContext>(
    client: &AdminClient<C>,
    op: &'static str,
    timeout: Duration,
) -> Result<ClusterView, AdminError> {
    let mut req = Request::new(
        client,
        rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBECLUSTER,
        op,
        timeout,
    )?;
    // SAFETY: `options` is live; an error returned is ours to read and free.
    let refused = unsafe {
        let err = rd::rd_kafka_AdminOptions_set_include_authorized_operations(req.options, 1);
        if err.is_null() {
            None
        } else {
            let m = text(rd::rd_kafka_error_string(err));
            rd::rd_kafka_error_destroy(err);
            Some(m)
        }
    };
    if let Some(message) = refused {
        return Err(AdminError::Rejected { op, message });
    }
    // SAFETY: `rk`, options and queue are live.
    unsafe { rd::rd_kafka_DescribeCluster(req.rk, req.options, req.queue) };
    let event = req.wait()?;
    // SAFETY: `event` is live; the result, the node array, the nodes and the operations
    // array belong to the event, which `req` keeps until they are copied. A null operations
    // array means the broker did not say; a non-null one holds `n` valid operations (librdkafka
    // builds it from the bits it knows).
    unsafe {
        let result = rd::rd_kafka_event_DescribeCluster_result(event);
        if result.is_null() {
            return Err(req.unexpected_event());
        }
        let mut n = 0usize;
        let arr = rd::rd_kafka_DescribeCluster_result_nodes(result, &mut n);
        let nodes = (0..n).map(|i| rd::rd_kafka_Node_id(*arr.add(i))).collect();
        let mut n = 0usize;
        let ops = rd::rd_kafka_DescribeCluster_result_authorized_operations(result, &mut n);
        let authorized = (!ops.is_null()).then(|| (0..n).map(|i| operation(*ops.add(i))).collect());
        Ok(ClusterView { nodes, authorized })
    }
}

/// One config of broker `node`: `Ok(value)` (`None` when the broker does not say), or the
/// broker's refusal for this resource as (code, message).
fn broker_config<C: ClientContext>(
    client: &AdminClient<C>,
    op: &'static str,
    node: i32,
    name: &str,
    timeout: Duration,
) -> Result<Result<Option<String>, (rd::rd_kafka_resp_err_t, String)>, AdminError> {
    let mut req = Request::new(
        client,
        rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS,
        op,
        timeout,
    )?;
    let mut resources = Owned::new(rd::rd_kafka_ConfigResource_destroy);
    let id = cstring(op, &node.to_string())?;
    // SAFETY: `id` lives until after the call (librdkafka copies it); the resource made is
    // freed by `resources`.
    let made = resources.push(unsafe {
        rd::rd_kafka_ConfigResource_new(
            rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_BROKER,
            id.as_ptr(),
        )
    });
    if !made {
        return Err(AdminError::Rejected {
            op,
            message: format!("librdkafka could not make a resource for broker {node}"),
        });
    }
    // SAFETY: `rk`, options, queue and the resource are live; librdkafka copies the resource.
    unsafe {
        rd::rd_kafka_DescribeConfigs(
            req.rk,
            resources.items.as_mut_ptr(),
            resources.items.len(),
            req.options,
            req.queue,
        )
    };
    let event = req.wait()?;
    // SAFETY: `event` is live; the result, its resources, their entries and strings belong
    // to the event, which `req` keeps until they are copied.
    unsafe {
        let result = rd::rd_kafka_event_DescribeConfigs_result(event);
        if result.is_null() {
            return Err(req.unexpected_event());
        }
        let mut n = 0usize;
        let arr = rd::rd_kafka_DescribeConfigs_result_resources(result, &mut n);
        if n != 1 {
            return Err(AdminError::Unexpected {
                op,
                message: format!("{n} resources for one broker"),
            });
        }
        let res = *arr;
        let code = rd::rd_kafka_ConfigResource_error(res);
        if code != NO_ERROR {
            let mut m = text(rd::rd_kafka_ConfigResource_error_string(res));
            if m.is_empty() {
                m = default_message(code);
            }
            return Ok(Err((code, m)));
        }
        let mut n = 0usize;
        let entries = rd::rd_kafka_ConfigResource_configs(res, &mut n);
        for i in 0..n {
            let e = *entries.add(i);
            if text(rd::rd_kafka_ConfigEntry_name(e)) == name {
                let v = rd::rd_kafka_ConfigEntry_value(e);
                return Ok(Ok((!v.is_null()).then(|| text(v))));
            }
        }
        Ok(Ok(None))
    }
}

pub(crate) fn create_topic_acls<C: ClientContext>(
    client: &AdminClient<C>,
    acls: &[TopicAcl],
    timeout: Duration,
) -> Result<Vec<Result<(), String>>, AdminError> {
    const OP: &str = "creating ACLs";
    // `None` until the broker answers for the binding.
    let mut results: Vec<Option<Result<(), String>>> = vec![None; acls.len()];
    let mut bindings = Owned::new(rd::rd_kafka_AclBinding_destroy);
    // Index in `acls` of each binding sent.
    let mut sent = Vec::with_capacity(acls.len());
    for (i, acl) in acls.iter().enumerate() {
        match make_binding(acl) {
            Ok(b) if bindings.push(b) => sent.push(i),
            Ok(_) => results[i] = Some(Err("not sent: librdkafka could not allocate it".into())),
            Err(e) => results[i] = Some(Err(format!("not sent: {e}"))),
        }
    }
    if !sent.is_empty() {
        let mut req = Request::new(
            client,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_CREATEACLS,
            OP,
            timeout,
        )?;
        // SAFETY: `rk`, options, queue and every binding are live; librdkafka copies the
        // bindings and only reads the array.
        unsafe {
            rd::rd_kafka_CreateAcls(
                req.rk,
                bindings.items.as_mut_ptr(),
                bindings.items.len(),
                req.options,
                req.queue,
            )
        };
        let event = req.wait()?;
        // SAFETY: `event` is live; the result, its array and the errors in it belong to the
        // event, which `req` keeps until the loop has copied them.
        unsafe {
            let result = rd::rd_kafka_event_CreateAcls_result(event);
            if result.is_null() {
                return Err(req.unexpected_event());
            }
            let mut n = 0usize;
            let arr = rd::rd_kafka_CreateAcls_result_acls(result, &mut n);
            // librdkafka checks this too; the mapping back to `acls` relies on it.
            if n != sent.len() {
                return Err(AdminError::Unexpected {
                    op: OP,
                    message: format!("{n} results for {} bindings", sent.len()),
                });
            }
            for (k, &i) in sent.iter().enumerate() {
                let err = rd::rd_kafka_acl_result_error(*arr.add(k));
                results[i] = Some(if err.is_null() {
                    Ok(())
                } else {
                    Err(item_error(err))
                });
            }
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.expect("every binding has a result"))
        .collect())
}

/// A new TOPIC binding for `acl`, or why librdkafka refuses it.
fn make_binding(acl: &TopicAcl) -> Result<*mut rd::rd_kafka_AclBinding_t, String> {
    let c =
        |what: &str, s: &str| CString::new(s).map_err(|_| format!("{what} {s:?} holds a NUL byte"));
    let topic = c("topic", &acl.topic)?;
    let principal = c("principal", &acl.principal)?;
    let host = c("host", &acl.host)?;
    let mut errstr = [0 as c_char; ERRSTR_LEN];
    // SAFETY: the strings live until after the call (librdkafka copies them); `errstr` is
    // writable for its length; the caller owns the binding returned.
    let b = unsafe {
        rd::rd_kafka_AclBinding_new(
            rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
            topic.as_ptr(),
            rd_pattern(acl.pattern),
            principal.as_ptr(),
            host.as_ptr(),
            rd_operation(acl.operation),
            rd_permission(acl.permission),
            errstr.as_mut_ptr(),
            errstr.len(),
        )
    };
    if b.is_null() {
        return Err(format!("{acl}: {}", buffer_text(&errstr)));
    }
    Ok(b)
}

// ---------------------------------------------------------------------------------------------
// Topic configs

pub(crate) fn incremental_alter_topic_configs<C: ClientContext>(
    client: &AdminClient<C>,
    changes: &[(String, Vec<ConfigOp>)],
    timeout: Duration,
) -> Result<crate::AlterResults, AdminError> {
    const OP: &str = "altering topic configs";
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let mut req = Request::new(
        client,
        rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_INCREMENTALALTERCONFIGS,
        OP,
        timeout,
    )?;
    let mut resources = Owned::new(rd::rd_kafka_ConfigResource_destroy);
    for (topic, ops) in changes {
        let name = cstring(OP, topic)?;
        // SAFETY: `name` lives until after the call (librdkafka copies it); the resource made
        // is freed by `resources`.
        let res = unsafe {
            rd::rd_kafka_ConfigResource_new(
                rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
                name.as_ptr(),
            )
        };
        if !resources.push(res) {
            return Err(AdminError::Rejected {
                op: OP,
                message: format!("librdkafka could not make a resource for topic {topic:?}"),
            });
        }
        for op in ops {
            let (key, value, kind) = match op {
                ConfigOp::Set(k, v) => (
                    cstring(OP, k)?,
                    Some(cstring(OP, v)?),
                    rd::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET,
                ),
                ConfigOp::Delete(k) => (
                    cstring(OP, k)?,
                    None,
                    rd::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_DELETE,
                ),
            };
            // SAFETY: `res` is live (owned by `resources`); `key` and `value` live until after
            // the call, which copies them; an error returned is ours to read and free.
            let refused = unsafe {
                let err = rd::rd_kafka_ConfigResource_add_incremental_config(
                    res,
                    key.as_ptr(),
                    kind,
                    value.as_ref().map_or(ptr::null(), |v| v.as_ptr()),
                );
                if err.is_null() {
                    None
                } else {
                    let m = text(rd::rd_kafka_error_string(err));
                    rd::rd_kafka_error_destroy(err);
                    Some(m)
                }
            };
            if let Some(m) = refused {
                return Err(AdminError::Rejected {
                    op: OP,
                    message: format!("topic {topic:?}: {m}"),
                });
            }
        }
    }
    // SAFETY: `rk`, options, queue and every resource are live; librdkafka copies the
    // resources and only reads the array.
    unsafe {
        rd::rd_kafka_IncrementalAlterConfigs(
            req.rk,
            resources.items.as_mut_ptr(),
            resources.items.len(),
            req.options,
            req.queue,
        )
    };
    let event = req.wait()?;
    // SAFETY: `event` is live; the result's resources and their strings belong to the event,
    // which `req` keeps until the loop has copied them.
    unsafe {
        let result = rd::rd_kafka_event_IncrementalAlterConfigs_result(event);
        if result.is_null() {
            return Err(req.unexpected_event());
        }
        let mut n = 0usize;
        let arr = rd::rd_kafka_IncrementalAlterConfigs_result_resources(result, &mut n);
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let r = *arr.add(i);
            let name = text(rd::rd_kafka_ConfigResource_name(r));
            let code = rd::rd_kafka_ConfigResource_error(r);
            let res = if code == NO_ERROR {
                Ok(())
            } else {
                let mut m = text(rd::rd_kafka_ConfigResource_error_string(r));
                if m.is_empty() {
                    m = default_message(code);
                }
                Err(format!("{m} ({})", code_name(code)))
            };
            out.push((name, res));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPERATIONS: [AclOperation; 13] = [
        AclOperation::Any,
        AclOperation::All,
        AclOperation::Read,
        AclOperation::Write,
        AclOperation::Create,
        AclOperation::Delete,
        AclOperation::Alter,
        AclOperation::Describe,
        AclOperation::ClusterAction,
        AclOperation::DescribeConfigs,
        AclOperation::AlterConfigs,
        AclOperation::IdempotentWrite,
        AclOperation::Unknown,
    ];
    const PATTERNS: [PatternType; 4] = [
        PatternType::Literal,
        PatternType::Prefixed,
        PatternType::Match,
        PatternType::Any,
    ];
    const PERMISSIONS: [AclPermission; 2] = [AclPermission::Allow, AclPermission::Deny];

    /// Our names are Kafka's, and so are librdkafka's: checking one against the other catches
    /// a variant mapped to the wrong C value.
    #[test]
    fn c_values_carry_the_same_names_in_librdkafka() {
        for op in OPERATIONS {
            // SAFETY: librdkafka returns a static name for every operation value.
            let name = unsafe { text(rd::rd_kafka_AclOperation_name(rd_operation(op))) };
            assert_eq!(name, op.to_string());
            assert_eq!(operation(rd_operation(op)), op);
            // librdkafka's values are Kafka's wire codes.
            assert_eq!(rd_operation(op) as u8, op.code(), "{op}");
        }
        for p in PATTERNS {
            // SAFETY: as above.
            let name = unsafe { text(rd::rd_kafka_ResourcePatternType_name(rd_pattern(p))) };
            assert_eq!(name, p.to_string());
            assert_eq!(pattern(rd_pattern(p)), Some(p));
        }
        for p in PERMISSIONS {
            // SAFETY: as above.
            let name = unsafe { text(rd::rd_kafka_AclPermissionType_name(rd_permission(p))) };
            assert_eq!(name, p.to_string());
            assert_eq!(permission(rd_permission(p)), Some(p));
            assert_eq!(rd_permission(p) as u8, p.code(), "{p}");
        }
    }

    #[test]
    fn values_librdkafka_could_not_read_are_not_guessed() {
        assert_eq!(
            operation(RdOp::RD_KAFKA_ACL_OPERATION_UNKNOWN),
            AclOperation::Unknown
        );
        assert_eq!(pattern(RdPattern::RD_KAFKA_RESOURCE_PATTERN_UNKNOWN), None);
        assert_eq!(
            permission(RdPermission::RD_KAFKA_ACL_PERMISSION_TYPE_UNKNOWN),
            None
        );
        assert_eq!(
            permission(RdPermission::RD_KAFKA_ACL_PERMISSION_TYPE_ANY),
            None
        );
    }

    #[test]
    fn a_filter_only_value_is_refused_before_any_request() {
        let base = TopicAcl {
            topic: "orders".into(),
            pattern: PatternType::Literal,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: AclOperation::Read,
            permission: AclPermission::Allow,
        };
        let cases = [
            (
                TopicAcl {
                    pattern: PatternType::Match,
                    ..base.clone()
                },
                "Invalid resource pattern type",
            ),
            (
                TopicAcl {
                    operation: AclOperation::Any,
                    ..base.clone()
                },
                "Invalid operation",
            ),
            (
                TopicAcl {
                    principal: "User:a\0b".into(),
                    ..base.clone()
                },
                "principal \"User:a\\0b\" holds a NUL byte",
            ),
        ];
        for (acl, reason) in cases {
            let e = make_binding(&acl).expect_err(reason);
            assert!(e.ends_with(reason), "{e}");
        }
        let b = make_binding(&base).expect("a plain ALLOW READ is a valid binding");
        // SAFETY: `b` was just made and is freed once.
        unsafe { rd::rd_kafka_AclBinding_destroy(b) };
    }

    #[test]
    fn error_names_are_librdkafkas() {
        let e = failed(
            "describing ACLs",
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_SECURITY_DISABLED,
            String::new(),
        );
        assert!(e.is_security_disabled());
        assert_eq!(
            e.to_string(),
            "describing ACLs: Broker: Security features are disabled (SECURITY_DISABLED)"
        );
    }
}
