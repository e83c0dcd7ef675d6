//! The `process-batch` argument lowered straight from the caller's records: one copy into plugin memory.
//!
//! The generated binding takes a `wit::Batch` whose `data` is one owned `Vec<u8>`, so every byte
//! of a batch used to be copied twice: into that staging buffer, then into the plugin's memory.
//! With 1 KiB records that memcpy was about half of the host's time per record. [`BatchArg`] has
//! the same component type (checked against the plugin's export at load) but borrows its columns,
//! and its `data` can be gathered piece by piece from the input records while it is written into
//! the plugin's memory.

use std::mem::MaybeUninit;

use wasmtime::ValRaw;
use wasmtime::component::__internal::{
    CanonicalAbiInfo, InstanceType, InterfaceType, LowerContext,
};
use wasmtime::component::{ComponentType, Func, Lower, TypedFunc};

use crate::bindings::edge_replicator::plugin::types as wit;
use crate::records::InRecord;

/// What `process-batch` returns.
pub(crate) type BatchReturn = (Result<wit::BatchResult, String>,);

/// The `batch` record of `wit/plugin.wit`, borrowed. Field names are the WIT names: the derive
/// type-checks them against the component.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct BatchArg<'a> {
    pub(crate) topics: &'a [String],
    #[component(name = "record-topics")]
    pub(crate) record_topics: &'a [u32],
    pub(crate) partitions: &'a [i32],
    pub(crate) offsets: &'a [i64],
    pub(crate) timestamps: &'a [i64],
    #[component(name = "record-fields")]
    pub(crate) record_fields: &'a [u32],
    #[component(name = "header-fields")]
    pub(crate) header_fields: &'a [u32],
    pub(crate) data: Data<'a>,
}

impl<'a> BatchArg<'a> {
    /// The columns of `batch` with the given bytes.
    pub(crate) fn new(batch: &'a wit::Batch, data: Data<'a>) -> Self {
        BatchArg {
            topics: &batch.topics,
            record_topics: &batch.record_topics,
            partitions: &batch.partitions,
            offsets: &batch.offsets,
            timestamps: &batch.timestamps,
            record_fields: &batch.record_fields,
            header_fields: &batch.header_fields,
            data,
        }
    }

    /// Number of records.
    pub(crate) fn len(&self) -> usize {
        self.record_topics.len()
    }
}

/// The batch's `data: list<u8>`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Data<'a> {
    /// Bytes already laid out in one buffer.
    Bytes(&'a [u8]),
    /// The pieces of these records, in [`pieces`] order, `len` bytes in all.
    Input {
        records: &'a [InRecord<'a>],
        len: usize,
    },
}

/// The bytes a record contributes to a batch's `data`, in the order the columns point at them:
/// each header's name and value, then the key, then the value (nulls contribute nothing).
pub(crate) fn pieces<'r>(r: &InRecord<'r>) -> impl Iterator<Item = &'r [u8]> {
    r.headers
        .iter()
        .flat_map(|(n, v)| std::iter::once(n.as_bytes()).chain(*v))
        .chain(r.key)
        .chain(r.value)
}

impl Data<'_> {
    /// Allocates the list in the plugin's memory (through its `realloc`) and fills it: the only
    /// copy of the batch's bytes.
    fn lower<T>(&self, cx: &mut LowerContext<'_, T>) -> wasmtime::Result<(usize, usize)> {
        let len = match self {
            Data::Bytes(b) => b.len(),
            Data::Input { len, .. } => *len,
        };
        let ptr = cx.realloc(0, 0, 1, len)?;
        // `realloc` checked that `ptr..ptr + len` lies in memory.
        let Some(dst) = cx.as_slice_mut().get_mut(ptr..ptr + len) else {
            wasmtime::bail!("batch data does not fit in plugin memory");
        };
        match self {
            Data::Bytes(b) => dst.copy_from_slice(b),
            Data::Input { records, .. } => {
                let mut at = 0;
                for piece in records.iter().flat_map(pieces) {
                    let end = at + piece.len();
                    let Some(d) = dst.get_mut(at..end) else {
                        wasmtime::bail!("batch data longer than its columns say ({len} bytes)");
                    };
                    d.copy_from_slice(piece);
                    at = end;
                }
                if at != len {
                    wasmtime::bail!("batch data is {at} bytes, its columns say {len}");
                }
            }
        }
        Ok((ptr, len))
    }
}

// SAFETY: `Data` is lowered exactly like `[u8]`, whose impls these delegate to: the same
// lowered representation (pointer and length as two `ValRaw`s), ABI info and type check.
#[allow(unsafe_code)]
unsafe impl ComponentType for Data<'_> {
    type Lower = <[u8] as ComponentType>::Lower;

    const ABI: CanonicalAbiInfo = <[u8] as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <[u8] as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: both methods fully initialize their destination (two `ValRaw`s, or the 8-byte pointer
// pair at `offset` that the caller reserved) with a pointer and length that `realloc` returned
// and `Data::lower` checked, as the canonical ABI lays out a `list<u8>`. No unsafe code inside.
#[allow(unsafe_code)]
unsafe impl Lower for Data<'_> {
    fn linear_lower_to_flat<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        dst: &mut MaybeUninit<Self::Lower>,
    ) -> wasmtime::Result<()> {
        let (ptr, len) = self.lower(cx)?;
        // Pointers are always stored as 64-bit integers in flat form (as wasmtime does).
        dst.write([ValRaw::i64(ptr as i64), ValRaw::i64(len as i64)]);
        Ok(())
    }

    fn linear_lower_to_memory<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        offset: usize,
    ) -> wasmtime::Result<()> {
        let (ptr, len) = self.lower(cx)?;
        *cx.get::<4>(offset) = u32::try_from(ptr)?.to_le_bytes();
        *cx.get::<4>(offset + 4) = u32::try_from(len)?.to_le_bytes();
        Ok(())
    }
}

/// `process-batch` of a plugin instance, type-checked once against [`BatchArg`].
#[derive(Clone, Copy)]
pub(crate) struct ProcessBatch(Func);

impl ProcessBatch {
    /// Checks that `func` takes a [`BatchArg`] and returns a [`BatchReturn`].
    pub(crate) fn new(func: Func, store: impl wasmtime::AsContext) -> wasmtime::Result<Self> {
        func.typed::<(BatchArg<'_>,), BatchReturn>(store)?;
        Ok(ProcessBatch(func))
    }

    /// Calls it.
    pub(crate) fn call(
        self,
        store: impl wasmtime::AsContextMut,
        batch: BatchArg<'_>,
    ) -> wasmtime::Result<Result<wit::BatchResult, String>> {
        // SAFETY: `new` type-checked this function against exactly these parameter and result
        // types (lifetimes do not change a component type). The generated bindings do the same.
        #[allow(unsafe_code)]
        let typed = unsafe { TypedFunc::<(BatchArg<'_>,), BatchReturn>::new_unchecked(self.0) };
        Ok(typed.call(store, (batch,))?.0)
    }
}
