/* acl_sizes.h - how much device memory an ACL allocation really takes, by the documented rules
 * of the runtime: aclrtMalloc (and its Cached and WithCfg forms) rounds the size up to a
 * multiple of 32 bytes and adds 32; aclrtMallocAlign32 only rounds; a huge-page policy takes
 * whole 2 MiB pages for anything over 1 MiB (a policy outside the enum: from 2 MiB on). The
 * hooks charge this, and the stand-in runtime holds this, so the quota counts what the device
 * loses. Header-only, shared by acl/ and tests/fake_driver/acl/; must stay free of state.
 */
#ifndef FX_ACL_SIZES_H
#define FX_ACL_SIZES_H

#include <stddef.h>
#include <stdint.h>

#define FX_ACL_HUGE_PAGE ((uint64_t)2 << 20)

static inline uint64_t fx_acl_round_up(uint64_t n, uint64_t to)
{
    return n > UINT64_MAX - (to - 1) ? UINT64_MAX : (n + to - 1) / to * to;
}

/* Bytes taken by an allocation of `size` under `policy` (aclrtMemMallocPolicy, possibly OR-ed
 * with bandwidth bits); `align32`: aclrtMallocAlign32 (no extra 32 bytes). */
static inline uint64_t fx_acl_alloc_bytes(uint64_t size, unsigned policy, int align32)
{
    uint64_t bytes = fx_acl_round_up(size, 32);
    if (!align32 && bytes <= UINT64_MAX - 32) bytes += 32;
    unsigned base = policy & 0xffu;
    int huge = base == 0 || base == 1 || base == 3 || base == 4; /* HUGE_FIRST, HUGE_ONLY, P2P */
    if ((huge && size > ((uint64_t)1 << 20)) || (base > 7 && size >= FX_ACL_HUGE_PAGE))
        bytes = fx_acl_round_up(bytes, FX_ACL_HUGE_PAGE);
    return bytes;
}

#endif
