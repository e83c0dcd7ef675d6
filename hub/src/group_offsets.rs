//! Reads and alters a consumer group's committed offsets through librdkafka's Admin API, on a
//! client the caller already has: no consumer (and no client) per group.
//!
//! rust-rdkafka 0.39 has no binding for `ListConsumerGroupOffsets` / `AlterConsumerGroupOffsets`,
//! so this module calls the C functions of rdkafka-sys directly. Each call posts one request on
//! the client's own threads with a private reply queue, blocks on that queue for the result event
//! (so call it off the async executor), and destroys everything it allocated on every path,
//! through [`Owned`] guards. A timed-out request may still be answered later: librdkafka then
//! drops the answer, because the queue it was meant for is gone.
//!
//! The only module of the hub with `unsafe`: every block says why it is sound.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char, c_int};
use std::ptr;
use std::time::Duration;

use er_protocol::TopicPartition;
use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};
use rdkafka::types::RDKafkaErrorCode;

/// A Kafka or librdkafka error code, as librdkafka reported it.
///
/// Kept as the raw number: a broker may answer with a code newer than the librdkafka the hub
/// was built with, and such a value must never become a Rust enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub i32);

impl ErrorCode {
    /// The code as rdkafka's enum, when this librdkafka knows it.
    pub fn known(self) -> Option<RDKafkaErrorCode> {
        rd::rd_kafka_resp_err_t::try_from(self.0)
            .ok()
            .map(RDKafkaErrorCode::from)
    }

    /// Whether the broker refused to change a group's offsets from outside because the group has
    /// active members (or is between generations). An admin commit carries no member id and
    /// generation -1, which Kafka accepts only for an empty group; otherwise the classic
    /// coordinator answers `UNKNOWN_MEMBER_ID` (or `REBALANCE_IN_PROGRESS` while completing a
    /// rebalance, or `ILLEGAL_GENERATION` in older brokers), the KIP-848 one `UNKNOWN_MEMBER_ID`
    /// (or a member epoch error).
    pub fn means_group_active(self) -> bool {
        matches!(
            self.known(),
            Some(
                RDKafkaErrorCode::UnknownMemberId
                    | RDKafkaErrorCode::RebalanceInProgress
                    | RDKafkaErrorCode::IllegalGeneration
                    | RDKafkaErrorCode::StaleMemberEpoch
                    | RDKafkaErrorCode::FencedMemberEpoch
            )
        )
    }

    /// Whether the group's coordinator is moving or still loading (right after a broker start,
    /// or while `__consumer_offsets` leadership changes): the same request succeeds once the
    /// client has found the new coordinator. librdkafka's Admin API does not retry these itself.
    pub fn means_coordinator_moving(self) -> bool {
        matches!(
            self.known(),
            Some(
                RDKafkaErrorCode::NotCoordinator
                    | RDKafkaErrorCode::CoordinatorLoadInProgress
                    | RDKafkaErrorCode::CoordinatorNotAvailable
            )
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.known() {
            Some(code) => write!(f, "{code} ({})", self.0),
            None => write!(f, "error code {} (unknown to this librdkafka)", self.0),
        }
    }
}

/// What the broker answered for one partition.
pub type PartitionResult<T> = Result<T, ErrorCode>;

/// A group offsets request that failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum GroupOffsetsError {
    /// Something librdkafka cannot carry: a name with a NUL byte, or a negative offset.
    #[error("group {group:?}: {message}")]
    InvalidArgument {
        /// The consumer group.
        group: String,
        /// What is wrong, with the value.
        message: String,
    },
    /// librdkafka could not allocate a request, options or a queue.
    #[error("group {group:?}: librdkafka could not allocate {what}")]
    Allocation {
        /// The consumer group.
        group: String,
        /// What could not be allocated.
        what: &'static str,
    },
    /// The request failed before the broker answered per partition (coordinator not found,
    /// authorization, librdkafka's own request timeout, a connection lost...).
    #[error("group {group:?}: {what} failed: {code}: {message}")]
    Request {
        /// The consumer group.
        group: String,
        /// Which request.
        what: &'static str,
        /// The error code of the result.
        code: ErrorCode,
        /// librdkafka's description.
        message: String,
    },
    /// No result arrived in time (librdkafka did not even report its own timeout).
    #[error("group {group:?}: {what}: no result after {waited:?}")]
    Timeout {
        /// The consumer group.
        group: String,
        /// Which request.
        what: &'static str,
        /// How long it waited.
        waited: Duration,
    },
    /// librdkafka answered with a result this module does not expect (a bug, here or there).
    #[error("group {group:?}: {what}: unexpected result: {message}")]
    Unexpected {
        /// The consumer group.
        group: String,
        /// Which request.
        what: &'static str,
        /// What was unexpected.
        message: String,
    },
}

impl GroupOffsetsError {
    /// The request failed because the group's coordinator is moving or loading: worth asking
    /// again (see [`ErrorCode::means_coordinator_moving`]).
    fn coordinator_moving(&self) -> bool {
        matches!(self, Self::Request { code, .. } if code.means_coordinator_moving())
    }
}

/// First wait before asking again while a coordinator moves; doubled up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Runs `attempt` with the time left of `timeout` until its answer is not "the coordinator is
/// moving" (as a whole, or for any partition), or the time is spent; the last answer is returned.
/// Both requests are safe to repeat: one reads, the other sets absolute offsets.
fn retrying<T>(
    timeout: Duration,
    mut attempt: impl FnMut(
        Duration,
    )
        -> Result<BTreeMap<TopicPartition, PartitionResult<T>>, GroupOffsetsError>,
) -> Result<BTreeMap<TopicPartition, PartitionResult<T>>, GroupOffsetsError> {
    let deadline = std::time::Instant::now() + timeout;
    let mut pause = RETRY_FIRST;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let answer = attempt(left);
        let moving = match &answer {
            Err(e) => e.coordinator_moving(),
            Ok(rows) => rows
                .values()
                .any(|r| matches!(r, Err(code) if code.means_coordinator_moving())),
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if !moving || left <= pause {
            return answer;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// The committed offset of each of `partitions` in `group` (`None` where the group has none),
/// or the broker's error for that partition. Blocking, up to about `timeout`; asks again while
/// the group's coordinator moves.
pub fn committed<C: ClientContext>(
    client: &Client<C>,
    group: &str,
    partitions: &[TopicPartition],
    timeout: Duration,
) -> Result<BTreeMap<TopicPartition, PartitionResult<Option<i64>>>, GroupOffsetsError> {
    retrying(timeout, |left| {
        committed_once(client, group, partitions, left)
    })
}

fn committed_once<C: ClientContext>(
    client: &Client<C>,
    group: &str,
    partitions: &[TopicPartition],
    timeout: Duration,
) -> Result<BTreeMap<TopicPartition, PartitionResult<Option<i64>>>, GroupOffsetsError> {
    if partitions.is_empty() {
        return Ok(BTreeMap::new());
    }
    let call = Call::new(client, group, Request::List)?;
    let list = call.partition_list(partitions.iter().map(|tp| (tp, None)))?;
    // SAFETY: `group` is a NUL-terminated string and `list` a valid list; both are only read
    // and copied (the function duplicates the list), so our guard still owns `list`.
    let request =
        unsafe { rd::rd_kafka_ListConsumerGroupOffsets_new(call.group.as_ptr(), list.ptr) };
    let request = Owned::new(
        request,
        rd::rd_kafka_ListConsumerGroupOffsets_destroy,
        call.alloc_err("a ListConsumerGroupOffsets request"),
    )?;
    let event = call.run(timeout, |rk, options, queue| {
        let mut one = request.ptr;
        // SAFETY: `rk` is the live client handle, `one` points at exactly one request object
        // (count 1), `options` and `queue` are valid; librdkafka copies the request and options
        // and takes its own reference on the queue before returning.
        unsafe { rd::rd_kafka_ListConsumerGroupOffsets(rk, &raw mut one, 1, options, queue) }
    })?;
    // SAFETY: `event` is a result event of the type `run` checked; the accessor returns a view
    // into it (or null), valid while the event lives.
    let result = unsafe { rd::rd_kafka_event_ListConsumerGroupOffsets_result(event.ptr) };
    let mut count = 0usize;
    // SAFETY: `result` is checked for null by `group_partitions` before use; when not null the
    // accessor fills `count` and returns an array of `count` pointers owned by the event.
    let groups = if result.is_null() {
        ptr::null_mut()
    } else {
        unsafe { rd::rd_kafka_ListConsumerGroupOffsets_result_groups(result, &raw mut count) }
    };
    let rows = call.group_partitions(groups, count)?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let r = match row.err {
                Some(e) => Err(e),
                // librdkafka reports "no committed offset" as a negative logical offset.
                None => Ok((row.offset >= 0).then_some(row.offset)),
            };
            (row.tp, r)
        })
        .collect())
}

/// Sets `group`'s committed offsets to `offsets` (every one `>= 0`), in one request; returns
/// the broker's answer per partition. Kafka accepts it only while the group has no active
/// member (see [`ErrorCode::means_group_active`]). Blocking, up to about `timeout`; asks again
/// while the group's coordinator moves.
pub fn alter<C: ClientContext>(
    client: &Client<C>,
    group: &str,
    offsets: &BTreeMap<TopicPartition, i64>,
    timeout: Duration,
) -> Result<BTreeMap<TopicPartition, PartitionResult<()>>, GroupOffsetsError> {
    retrying(timeout, |left| alter_once(client, group, offsets, left))
}

fn alter_once<C: ClientContext>(
    client: &Client<C>,
    group: &str,
    offsets: &BTreeMap<TopicPartition, i64>,
    timeout: Duration,
) -> Result<BTreeMap<TopicPartition, PartitionResult<()>>, GroupOffsetsError> {
    if offsets.is_empty() {
        return Ok(BTreeMap::new());
    }
    let call = Call::new(client, group, Request::Alter)?;
    if let Some((tp, o)) = offsets.iter().find(|(_, o)| **o < 0) {
        return Err(call.invalid(format!("negative offset {o} for {tp}")));
    }
    let list = call.partition_list(offsets.iter().map(|(tp, o)| (tp, Some(*o))))?;
    // SAFETY: as in `committed`: both arguments are only read, the list is copied.
    let request =
        unsafe { rd::rd_kafka_AlterConsumerGroupOffsets_new(call.group.as_ptr(), list.ptr) };
    let request = Owned::new(
        request,
        rd::rd_kafka_AlterConsumerGroupOffsets_destroy,
        call.alloc_err("an AlterConsumerGroupOffsets request"),
    )?;
    let event = call.run(timeout, |rk, options, queue| {
        let mut one = request.ptr;
        // SAFETY: as in `committed`: one valid request, valid options and queue, all copied or
        // referenced by librdkafka before it returns.
        unsafe { rd::rd_kafka_AlterConsumerGroupOffsets(rk, &raw mut one, 1, options, queue) }
    })?;
    // SAFETY: as in `committed`.
    let result = unsafe { rd::rd_kafka_event_AlterConsumerGroupOffsets_result(event.ptr) };
    let mut count = 0usize;
    // SAFETY: as in `committed`.
    let groups = if result.is_null() {
        ptr::null_mut()
    } else {
        unsafe { rd::rd_kafka_AlterConsumerGroupOffsets_result_groups(result, &raw mut count) }
    };
    let rows = call.group_partitions(groups, count)?;
    let mut out: BTreeMap<TopicPartition, PartitionResult<()>> = rows
        .into_iter()
        .map(|row| (row.tp, row.err.map_or(Ok(()), Err)))
        .collect();
    // librdkafka answers for every partition asked; a missing one was not committed.
    for tp in offsets.keys() {
        out.entry(tp.clone()).or_insert(Err(ErrorCode(
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__FAIL as i32,
        )));
    }
    Ok(out)
}

/// Which Admin API request a [`Call`] makes.
#[derive(Debug, Clone, Copy)]
enum Request {
    List,
    Alter,
}

impl Request {
    fn name(self) -> &'static str {
        match self {
            Request::List => "ListConsumerGroupOffsets",
            Request::Alter => "AlterConsumerGroupOffsets",
        }
    }

    fn op(self) -> rd::rd_kafka_admin_op_t {
        match self {
            Request::List => rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPOFFSETS,
            Request::Alter => rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_ALTERCONSUMERGROUPOFFSETS,
        }
    }

    fn event_type(self) -> c_int {
        match self {
            Request::List => rd::RD_KAFKA_EVENT_LISTCONSUMERGROUPOFFSETS_RESULT,
            Request::Alter => rd::RD_KAFKA_EVENT_ALTERCONSUMERGROUPOFFSETS_RESULT,
        }
    }
}

/// One request on one client for one group.
struct Call<'c> {
    rk: *mut rd::rd_kafka_t,
    /// Keeps the client (and so `rk`) alive while the call runs.
    _client: std::marker::PhantomData<&'c ()>,
    group_name: &'c str,
    group: CString,
    request: Request,
}

/// One partition of a group result.
struct Row {
    tp: TopicPartition,
    offset: i64,
    err: Option<ErrorCode>,
}

impl<'c> Call<'c> {
    fn new<C: ClientContext>(
        client: &'c Client<C>,
        group: &'c str,
        request: Request,
    ) -> Result<Self, GroupOffsetsError> {
        let c_group = CString::new(group).map_err(|_| GroupOffsetsError::InvalidArgument {
            group: group.to_owned(),
            message: "group name contains a NUL byte".into(),
        })?;
        Ok(Self {
            rk: client.native_ptr(),
            _client: std::marker::PhantomData,
            group_name: group,
            group: c_group,
            request,
        })
    }

    fn invalid(&self, message: String) -> GroupOffsetsError {
        GroupOffsetsError::InvalidArgument {
            group: self.group_name.to_owned(),
            message,
        }
    }

    fn alloc_err(&self, what: &'static str) -> GroupOffsetsError {
        GroupOffsetsError::Allocation {
            group: self.group_name.to_owned(),
            what,
        }
    }

    fn unexpected(&self, message: String) -> GroupOffsetsError {
        GroupOffsetsError::Unexpected {
            group: self.group_name.to_owned(),
            what: self.request.name(),
            message,
        }
    }

    /// A librdkafka partition list holding `partitions`, each with its offset when given.
    fn partition_list<'a>(
        &self,
        partitions: impl ExactSizeIterator<Item = (&'a TopicPartition, Option<i64>)>,
    ) -> Result<Owned<rd::rd_kafka_topic_partition_list_t>, GroupOffsetsError> {
        let size = c_int::try_from(partitions.len())
            .map_err(|_| self.invalid(format!("{} partitions in one request", partitions.len())))?;
        // SAFETY: plain allocation; the guard destroys it.
        let list = unsafe { rd::rd_kafka_topic_partition_list_new(size) };
        let list = Owned::new(
            list,
            rd::rd_kafka_topic_partition_list_destroy,
            self.alloc_err("a partition list"),
        )?;
        for (tp, offset) in partitions {
            let topic = CString::new(tp.topic.as_str())
                .map_err(|_| self.invalid(format!("topic {:?} contains a NUL byte", tp.topic)))?;
            // SAFETY: `list.ptr` is a valid list; `topic` is NUL-terminated and copied by the
            // call. The returned element lives in the list, which we hold exclusively.
            let elem = unsafe {
                rd::rd_kafka_topic_partition_list_add(list.ptr, topic.as_ptr(), tp.partition)
            };
            if elem.is_null() {
                return Err(self.alloc_err("a partition list element"));
            }
            if let Some(o) = offset {
                // SAFETY: `elem` is non-null and points into `list`, which nothing else uses.
                unsafe { (*elem).offset = o };
            }
        }
        Ok(list)
    }

    /// Posts the request with `post(rk, options, queue)` and waits for its result event, which
    /// is returned only when it is of the expected type and carries no request-level error.
    fn run(
        &self,
        timeout: Duration,
        post: impl FnOnce(
            *mut rd::rd_kafka_t,
            *mut rd::rd_kafka_AdminOptions_t,
            *mut rd::rd_kafka_queue_t,
        ),
    ) -> Result<Owned<rd::rd_kafka_event_t>, GroupOffsetsError> {
        let what = self.request.name();
        // SAFETY: `rk` is the handle of a client borrowed for 'c, alive during this call.
        let options = unsafe { rd::rd_kafka_AdminOptions_new(self.rk, self.request.op()) };
        let options = Owned::new(
            options,
            rd::rd_kafka_AdminOptions_destroy,
            self.alloc_err("admin options"),
        )?;
        let timeout_ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
        let mut errstr = [0 as c_char; 512];
        // SAFETY: `options` is valid; `errstr` is a writable buffer of the given size that
        // librdkafka NUL-terminates.
        let set = unsafe {
            rd::rd_kafka_AdminOptions_set_request_timeout(
                options.ptr,
                timeout_ms,
                errstr.as_mut_ptr(),
                errstr.len(),
            )
        };
        if set != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            // SAFETY: NUL-terminated by librdkafka (the buffer started zeroed).
            let message = unsafe { CStr::from_ptr(errstr.as_ptr()) }.to_string_lossy();
            return Err(self.invalid(format!("request timeout {timeout:?}: {message}")));
        }
        // SAFETY: as for the options.
        let queue = unsafe { rd::rd_kafka_queue_new(self.rk) };
        let queue = Owned::new(
            queue,
            rd::rd_kafka_queue_destroy,
            self.alloc_err("a reply queue"),
        )?;
        post(self.rk, options.ptr, queue.ptr);
        // librdkafka reports its own timeout as a result event; the margin lets it do so.
        let waited = timeout + Duration::from_secs(1);
        let poll_ms = c_int::try_from(waited.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: `queue` is valid and only this thread polls it; the event returned (if any)
        // is ours to destroy, which the guard does.
        let event = unsafe { rd::rd_kafka_queue_poll(queue.ptr, poll_ms) };
        let Ok(event) = Owned::new(event, rd::rd_kafka_event_destroy, ()) else {
            return Err(GroupOffsetsError::Timeout {
                group: self.group_name.to_owned(),
                what,
                waited,
            });
        };
        // SAFETY: `event` is a valid event.
        let kind = unsafe { rd::rd_kafka_event_type(event.ptr) };
        if kind != self.request.event_type() {
            return Err(self.unexpected(format!("event type {kind}")));
        }
        // SAFETY: `event` is valid. The error is read as the integer librdkafka returns (see
        // `event_error_raw`), never as a Rust enum that might not hold the value.
        let code = unsafe { event_error_raw(event.ptr) };
        if code != 0 {
            // SAFETY: valid event; the string (or null) belongs to the event.
            let message = unsafe { c_string(rd::rd_kafka_event_error_string(event.ptr)) };
            return Err(GroupOffsetsError::Request {
                group: self.group_name.to_owned(),
                what,
                code: ErrorCode(code),
                message,
            });
        }
        Ok(event)
    }

    /// The partitions of this call's group in a result's `groups` array (`count` elements, owned
    /// by the result event, which the caller keeps alive).
    fn group_partitions(
        &self,
        groups: *mut *const rd::rd_kafka_group_result_t,
        count: usize,
    ) -> Result<Vec<Row>, GroupOffsetsError> {
        if groups.is_null() || count == 0 {
            return Err(self.unexpected("no group in the result".into()));
        }
        // SAFETY: librdkafka returned `count` valid pointers at `groups`, alive with the event.
        let groups = unsafe { std::slice::from_raw_parts(groups.cast_const(), count) };
        let mut found = None;
        for &g in groups {
            // SAFETY: `g` is a valid group result; its name is a NUL-terminated string.
            let name = unsafe { c_string(rd::rd_kafka_group_result_name(g)) };
            if name == self.group_name {
                found = Some(g);
                break;
            }
        }
        let Some(g) = found else {
            return Err(self.unexpected(format!("{count} groups in the result, none is ours")));
        };
        // SAFETY: `g` is valid; the error (or null) belongs to the group result.
        let error = unsafe { rd::rd_kafka_group_result_error(g) };
        if !error.is_null() {
            // SAFETY: `error` is a valid error object owned by the result (not destroyed here).
            // Its code is read as an integer through `error_code_raw`, like the event's.
            let (code, message) = unsafe {
                (
                    error_code_raw(error),
                    c_string(rd::rd_kafka_error_string(error)),
                )
            };
            return Err(GroupOffsetsError::Request {
                group: self.group_name.to_owned(),
                what: self.request.name(),
                code: ErrorCode(code),
                message,
            });
        }
        // SAFETY: `g` is valid; the list (or null) belongs to the group result.
        let list = unsafe { rd::rd_kafka_group_result_partitions(g) };
        if list.is_null() {
            return Err(self.unexpected("a group result without partitions".into()));
        }
        // SAFETY: a valid list; `elems` holds `cnt` initialised elements.
        let (elems, cnt) = unsafe { ((*list).elems.cast_const(), (*list).cnt) };
        let cnt = usize::try_from(cnt).unwrap_or(0);
        if cnt > 0 && elems.is_null() {
            return Err(self.unexpected(format!("{cnt} partitions without elements")));
        }
        let mut rows = Vec::with_capacity(cnt);
        for i in 0..cnt {
            // SAFETY: `i < cnt`, so `e` points at an initialised element of the list, alive with
            // the event. Fields are read through the raw pointer, never a reference to the whole
            // struct: `err` is read as the i32 it is in memory (`rd_kafka_resp_err_t` is
            // `repr(i32)`, a C enum is an int), so a code this build does not know stays a
            // number. `topic` is the element's NUL-terminated name.
            let (topic, partition, offset, err) = unsafe {
                let e = elems.add(i);
                (
                    c_string((*e).topic),
                    (*e).partition,
                    (*e).offset,
                    (&raw const (*e).err).cast::<i32>().read(),
                )
            };
            rows.push(Row {
                tp: TopicPartition::new(topic, partition),
                offset,
                err: (err != 0).then_some(ErrorCode(err)),
            });
        }
        Ok(rows)
    }
}

// The same C functions as rdkafka-sys declares, returning the error as the `int` it is in C:
// a broker may send a code this librdkafka's enum lacks, and a Rust enum must never hold a
// value outside its variants.
unsafe extern "C" {
    #[link_name = "rd_kafka_event_error"]
    fn event_error_raw(rkev: *mut rd::rd_kafka_event_t) -> i32;
    #[link_name = "rd_kafka_error_code"]
    fn error_code_raw(error: *const rd::rd_kafka_error_t) -> i32;
}

/// An owned C string or "" for null.
///
/// # Safety
/// `p` is null or a valid NUL-terminated string.
unsafe fn c_string(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: per the contract above.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// A librdkafka object this module allocated, destroyed when dropped.
struct Owned<T> {
    ptr: *mut T,
    destroy: unsafe extern "C" fn(*mut T),
}

impl<T> Owned<T> {
    /// Takes ownership of `ptr`, or returns `err` when librdkafka returned null.
    fn new<E>(ptr: *mut T, destroy: unsafe extern "C" fn(*mut T), err: E) -> Result<Self, E> {
        if ptr.is_null() {
            Err(err)
        } else {
            Ok(Self { ptr, destroy })
        }
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: `ptr` is non-null, was returned by the allocator matching `destroy` (the
        // pairs are written together at each `Owned::new`), is owned by this guard alone and
        // is destroyed exactly once, here.
        unsafe { (self.destroy)(self.ptr) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::Consumer;

    #[test]
    fn refusals_of_a_group_with_members_say_the_group_is_active() {
        let table = [
            (25, true),    // UNKNOWN_MEMBER_ID: admin commit to a non-empty group
            (27, true),    // REBALANCE_IN_PROGRESS
            (22, true),    // ILLEGAL_GENERATION
            (113, true),   // STALE_MEMBER_EPOCH
            (110, true),   // FENCED_MEMBER_EPOCH
            (30, false),   // GROUP_AUTHORIZATION_FAILED
            (15, false),   // COORDINATOR_NOT_AVAILABLE
            (3, false),    // UNKNOWN_TOPIC_OR_PARTITION
            (-185, false), // __TIMED_OUT
            (0, false),
            (125, false), // a code this librdkafka does not know
        ];
        for (code, active) in table {
            assert_eq!(ErrorCode(code).means_group_active(), active, "code {code}");
        }
    }

    fn moving(group: &str) -> GroupOffsetsError {
        GroupOffsetsError::Request {
            group: group.into(),
            what: "ListConsumerGroupOffsets",
            code: ErrorCode(16), // NOT_COORDINATOR
            message: "Broker: Not coordinator".into(),
        }
    }

    #[test]
    fn a_moving_coordinator_is_asked_again_until_it_answers() {
        let tp = TopicPartition::new("t", 0);
        let mut calls = 0;
        let got = retrying(Duration::from_secs(10), |_| {
            calls += 1;
            match calls {
                1 => Err(moving("g")),
                // Per partition: COORDINATOR_LOAD_IN_PROGRESS.
                2 => Ok(BTreeMap::from([(tp.clone(), Err(ErrorCode(14)))])),
                _ => Ok(BTreeMap::from([(tp.clone(), Ok(Some(7)))])),
            }
        })
        .expect("answered on the third call");
        assert_eq!(calls, 3);
        assert_eq!(got[&tp], Ok(Some(7)));
    }

    #[test]
    fn other_errors_are_not_retried_and_a_moving_one_stops_at_the_timeout() {
        let mut calls = 0;
        let err = retrying::<()>(Duration::from_secs(10), |_| {
            calls += 1;
            Err(GroupOffsetsError::Request {
                group: "g".into(),
                what: "AlterConsumerGroupOffsets",
                code: ErrorCode(30), // GROUP_AUTHORIZATION_FAILED
                message: "denied".into(),
            })
        })
        .expect_err("not retried");
        assert_eq!(calls, 1, "{err}");

        let started = std::time::Instant::now();
        let mut calls = 0;
        let err = retrying::<()>(Duration::from_millis(400), |left| {
            calls += 1;
            assert!(left <= Duration::from_millis(400));
            Err(moving("g"))
        })
        .expect_err("never answered");
        assert!(
            err.coordinator_moving(),
            "the last answer is returned: {err}"
        );
        assert!(calls >= 2, "asked again before the timeout: {calls}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "bounded by the timeout"
        );
    }

    #[test]
    fn an_unknown_code_stays_a_number() {
        assert_eq!(ErrorCode(125).known(), None);
        assert!(ErrorCode(125).to_string().contains("125"));
        assert_eq!(
            ErrorCode(25).known(),
            Some(RDKafkaErrorCode::UnknownMemberId)
        );
    }

    #[test]
    fn a_group_name_with_a_nul_byte_is_refused_before_any_request() {
        let client: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .create()
            .expect("a client without brokers");
        let tp = TopicPartition::new("t", 0);
        let err = committed(
            client.client(),
            "a\0b",
            std::slice::from_ref(&tp),
            Duration::from_secs(1),
        )
        .expect_err("NUL in the group name");
        assert!(
            matches!(err, GroupOffsetsError::InvalidArgument { .. }),
            "{err}"
        );
        let err = alter(
            client.client(),
            "g",
            &BTreeMap::from([(tp, -1)]),
            Duration::from_secs(1),
        )
        .expect_err("negative offset");
        assert!(err.to_string().contains("negative offset -1"), "{err}");
    }

    #[test]
    fn an_unreachable_cluster_is_a_request_error_within_the_timeout() {
        let client: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .create()
            .expect("a client without brokers");
        let started = std::time::Instant::now();
        let err = committed(
            client.client(),
            "g",
            &[TopicPartition::new("t", 0)],
            Duration::from_millis(500),
        )
        .expect_err("no broker");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        match err {
            GroupOffsetsError::Request { code, .. } => {
                assert_eq!(
                    code.known(),
                    Some(RDKafkaErrorCode::OperationTimedOut),
                    "{code}"
                );
            }
            other => panic!("expected librdkafka's own timeout, got {other}"),
        }
    }
}
