/* hook_stream.c - streams going away. The compute gate (core/gate.c) closes what it knows of a
 * stream with a mark before the stream is destroyed, so it never records on a destroyed handle
 * (or on a new stream that got the same address). Contexts going away are told to the gate by
 * their teardown wrappers in hook_mem.c. Wrappers only. */
#include "gate.h"
#include "shim.h"

FX_EXPORT CUresult cuStreamDestroy_v2(CUstream s)
{
    FX_ENTER(cuStreamDestroy_v2);
    if (s && s != CU_STREAM_LEGACY && s != CU_STREAM_PER_THREAD) fx_gate_forget_queue(s);
    return fx_cu.cuStreamDestroy_v2(s);
}
