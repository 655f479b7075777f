/* backend.h - all that the vendor-free core sees of an accelerator vendor (CUDA, Ascend ACL; the
 * remote client later). A backend is a table of operations; the core calls them and
 * nothing else of the vendor. Required operations are never NULL; optional ones may be, and the
 * core then goes without (no events: no compute gate, only memory quotas).
 *
 * Handles are opaque: a "queue" is the vendor's stream (CUstream, aclrtStream), `flags` carries
 * what the vendor needs to know about it (CUDA: per-thread default stream), a "context" is what
 * queues and events belong to and die with (CUcontext). Operations are called from any thread
 * of the host program, never while the core holds the region lock, and must not call back into
 * the core. They must be safe while the program captures work into a graph on any thread (CUDA:
 * queries run in relaxed capture mode, nothing touches a queue that cannot be used then).
 */
#ifndef FX_BACKEND_H
#define FX_BACKEND_H

#include <stdint.h>

#include "flexai.h"

typedef void *fx_event_t;
typedef void *fx_queue_t;
typedef void *fx_ctx_t;

/* What the core asks of a vendor's event operations. */
enum fx_event_state { FX_EV_DONE = 0, FX_EV_PENDING = 1, FX_EV_ERROR = -1 };

struct fx_backend {
    /// @brief Short name for logs ("cuda", "acl").
    const char *name;

    /// @brief The environment variable that selects the visible devices, for messages
    ///        ("CUDA_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES").
    const char *visible_env;

    /// @brief UUIDs of the devices this process sees, in the vendor's ordinal order, from the
    ///        compute driver (it is not initialized by this call).
    /// @param uuid  filled for ordinals 0..return-1.
    /// @param max   capacity of uuid.
    /// @return the count, or -1 when the driver is not initialized yet. Required.
    int (*devices)(uint8_t (*uuid)[16], int max);

    /// @brief The same answer without the compute driver (a management library such as NVML,
    ///        and the vendor's visible-devices variable), for processes that only query memory.
    ///        Optional.
    int (*devices_quiet)(uint8_t (*uuid)[16], int max);

    /// @brief Ordinal of the calling thread's current device, -1 without one. Required; called
    ///        on allocation and launch paths, so it must be cheap.
    int (*current_device)(void);

    /// @brief Create an event that can time work, in context `ctx` (NULL: the calling thread's
    ///        current one). 0 on success. Optional (with all event ops).
    int (*event_create)(fx_event_t *ev, fx_ctx_t ctx);
    /// @brief Destroy an event made by event_create (its context still alive).
    void (*event_destroy)(fx_event_t ev);
    /// @brief Record `ev` on queue `q` of context `ctx` (the event's) behind the work submitted
    ///        there. A queue named relative to the calling thread (CUDA: the NULL stream) is
    ///        taken in `ctx`. 0 on success.
    int (*event_record)(fx_event_t ev, fx_queue_t q, unsigned flags, fx_ctx_t ctx);
    /// @brief Whether the work before `ev` is done, without blocking.
    enum fx_event_state (*event_query)(fx_event_t ev);
    /// @brief Device time between two completed events of one context, in ns. 0 on success.
    int (*event_elapsed_ns)(fx_event_t start, fx_event_t end, uint64_t *ns);
    /// @brief 1 when nothing of the core's may be queued on `q` now: its work is being captured
    ///        into a graph (not run now), or the queue cannot be used while another one
    ///        captures (CUDA: the legacy stream while a blocking stream captures). Else 0.
    int (*queue_capturing)(fx_queue_t q, unsigned flags);
    /// @brief The context work on `q` goes to, as the calling thread names it; NULL when
    ///        unknown. Optional (then all is taken as one context).
    fx_ctx_t (*queue_context)(fx_queue_t q, unsigned flags);
    /// @brief 1 when `q` names the calling thread's own queue (CUDA: its per-thread default
    ///        stream): only this thread can record behind work it submitted there. Optional.
    int (*queue_per_thread)(fx_queue_t q, unsigned flags);

    /// @brief Learn what the driver gave back without a call the hooks saw (CUDA: stream-ordered
    ///        pools release memory at synchronizations) and give it back to the quota; called
    ///        when an allocation is over the quota, before it is refused.
    /// @return the bytes given back. Optional (NULL: the driver frees nothing behind our back).
    uint64_t (*mem_reclaim)(void);

    /// @brief The vendor's error code for a core status (FLEXAI_E_*): what a hook returns when
    ///        the core refuses (over quota, unusable state, bad configuration). Required.
    int (*error_code)(int32_t status);
};

/* The backend of this process, set once during initialization (process.c). */
extern const struct fx_backend *fx_backend;

#endif
