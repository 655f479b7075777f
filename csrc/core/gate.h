/* gate.h - the compute gate every submission of work passes (kernels, cooperative kernels,
 * graphs): a lease from timeshare.c, and a bound on the work this process keeps in flight,
 * measured with the backend's events. Vendor-free: the hook layer calls
 *
 *     struct fx_gate *g = fx_gate_enter(queue, flags, &status);
 *     if (status != FLEXAI_OK) return vendor_error(status);
 *     rc = real_launch(...);
 *     fx_gate_leave(g, rc == success, queue, flags);
 *
 * fx_gate_enter returns NULL when the launch goes straight to the driver (nothing scheduled on
 * this process's devices: one shared-memory load per device), else the device's gate with its
 * mutex held until fx_gate_leave. When the node's state cannot be used (a lock held too long,
 * a truncated file), *status says why and the launch must fail: work never runs unlimited.
 */
#ifndef FX_GATE_H
#define FX_GATE_H

#include "backend.h"

struct fx_gate;

struct fx_gate *fx_gate_enter(fx_queue_t queue, unsigned flags, int32_t *status);
void fx_gate_leave(struct fx_gate *g, int submitted, fx_queue_t queue, unsigned flags);

#endif
