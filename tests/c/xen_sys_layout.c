/*
 * Reports the compiled layout of every struct, ioctl number and macro in the
 * Linux Xen device headers (xen/sys/{gntdev,gntalloc,evtchn,xenbus_dev}.h) that
 * pvdisplay.hv.xen.abi mirrors, in the records layout_print.h describes.
 *
 * -DPLANT_OFFSET_ERROR=N reports gntalloc's index N bytes away from where it is,
 * so a test can prove the comparison bites.
 */
#include <stddef.h>
#include <stdint.h>

#include <linux/ioctl.h>
#include <xen/xen.h> /* domid_t, which evtchn.h uses without including it */
#include <xen/event_channel.h> /* evtchn_port_t, what the device reads and writes */
#include <xen/sys/evtchn.h>
#include <xen/sys/gntalloc.h>
#include <xen/sys/gntdev.h>
#include <xen/sys/xenbus_dev.h>

#include "layout_print.h"

#define S(name) SIZEOF("struct " #name, struct name)
#define F(name, path) FIELD("struct " #name, struct name, path)
#define I(macro) INT(#macro, macro)

static void gntdev(void)
{
    S(ioctl_gntdev_grant_ref);
    F(ioctl_gntdev_grant_ref, domid);
    F(ioctl_gntdev_grant_ref, ref);

    S(ioctl_gntdev_map_grant_ref);
    F(ioctl_gntdev_map_grant_ref, count);
    F(ioctl_gntdev_map_grant_ref, pad);
    F(ioctl_gntdev_map_grant_ref, index);
    F(ioctl_gntdev_map_grant_ref, refs[0].domid);
    F(ioctl_gntdev_map_grant_ref, refs[0].ref);

    S(ioctl_gntdev_unmap_grant_ref);
    F(ioctl_gntdev_unmap_grant_ref, index);
    F(ioctl_gntdev_unmap_grant_ref, count);
    F(ioctl_gntdev_unmap_grant_ref, pad);

    S(ioctl_gntdev_get_offset_for_vaddr);
    F(ioctl_gntdev_get_offset_for_vaddr, vaddr);
    F(ioctl_gntdev_get_offset_for_vaddr, offset);
    F(ioctl_gntdev_get_offset_for_vaddr, count);
    F(ioctl_gntdev_get_offset_for_vaddr, pad);

    S(ioctl_gntdev_set_max_grants);
    F(ioctl_gntdev_set_max_grants, count);

    S(ioctl_gntdev_unmap_notify);
    F(ioctl_gntdev_unmap_notify, index);
    F(ioctl_gntdev_unmap_notify, action);
    F(ioctl_gntdev_unmap_notify, event_channel_port);

    S(ioctl_gntdev_grant_copy_segment);
    F(ioctl_gntdev_grant_copy_segment, source.foreign.ref);
    F(ioctl_gntdev_grant_copy_segment, source.foreign.offset);
    F(ioctl_gntdev_grant_copy_segment, source.foreign.domid);
    F(ioctl_gntdev_grant_copy_segment, dest.foreign.ref);
    F(ioctl_gntdev_grant_copy_segment, dest.foreign.offset);
    F(ioctl_gntdev_grant_copy_segment, dest.foreign.domid);
    F(ioctl_gntdev_grant_copy_segment, len);
    F(ioctl_gntdev_grant_copy_segment, flags);
    F(ioctl_gntdev_grant_copy_segment, status);
    /* The Python side describes each union by its foreign arm alone. */
    _Static_assert(sizeof(((struct ioctl_gntdev_grant_copy_segment *)0)->source.virt) ==
                       sizeof(((struct ioctl_gntdev_grant_copy_segment *)0)->source.foreign),
                   "foreign covers the whole union");

    S(ioctl_gntdev_grant_copy);
    F(ioctl_gntdev_grant_copy, count);
    /* A pointer: reported without signedness (comparing one with 0 is not C). */
    printf("field\tstruct ioctl_gntdev_grant_copy\tsegments\t%zu\t%zu\t0\n",
           offsetof(struct ioctl_gntdev_grant_copy, segments),
           sizeof(((struct ioctl_gntdev_grant_copy *)0)->segments));

    S(ioctl_gntdev_dmabuf_exp_from_refs);
    F(ioctl_gntdev_dmabuf_exp_from_refs, flags);
    F(ioctl_gntdev_dmabuf_exp_from_refs, count);
    F(ioctl_gntdev_dmabuf_exp_from_refs, fd);
    F(ioctl_gntdev_dmabuf_exp_from_refs, domid);
    F(ioctl_gntdev_dmabuf_exp_from_refs, refs[0]);

    S(ioctl_gntdev_dmabuf_exp_wait_released);
    F(ioctl_gntdev_dmabuf_exp_wait_released, fd);
    F(ioctl_gntdev_dmabuf_exp_wait_released, wait_to_ms);

    S(ioctl_gntdev_dmabuf_imp_to_refs);
    F(ioctl_gntdev_dmabuf_imp_to_refs, fd);
    F(ioctl_gntdev_dmabuf_imp_to_refs, count);
    F(ioctl_gntdev_dmabuf_imp_to_refs, domid);
    F(ioctl_gntdev_dmabuf_imp_to_refs, reserved);
    F(ioctl_gntdev_dmabuf_imp_to_refs, refs[0]);

    S(ioctl_gntdev_dmabuf_imp_release);
    F(ioctl_gntdev_dmabuf_imp_release, fd);
    F(ioctl_gntdev_dmabuf_imp_release, reserved);

    I(IOCTL_GNTDEV_MAP_GRANT_REF);
    I(IOCTL_GNTDEV_UNMAP_GRANT_REF);
    I(IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR);
    I(IOCTL_GNTDEV_SET_MAX_GRANTS);
    I(IOCTL_GNTDEV_SET_UNMAP_NOTIFY);
    I(IOCTL_GNTDEV_GRANT_COPY);
    I(IOCTL_GNTDEV_DMABUF_EXP_FROM_REFS);
    I(IOCTL_GNTDEV_DMABUF_EXP_WAIT_RELEASED);
    I(IOCTL_GNTDEV_DMABUF_IMP_TO_REFS);
    I(IOCTL_GNTDEV_DMABUF_IMP_RELEASE);
    I(UNMAP_NOTIFY_CLEAR_BYTE);
    I(UNMAP_NOTIFY_SEND_EVENT);
    I(GNTDEV_DMA_FLAG_WC);
    I(GNTDEV_DMA_FLAG_COHERENT);
}

static void gntalloc(void)
{
    S(ioctl_gntalloc_alloc_gref);
    F(ioctl_gntalloc_alloc_gref, domid);
    F(ioctl_gntalloc_alloc_gref, flags);
    F(ioctl_gntalloc_alloc_gref, count);
    FIELD_AT("struct ioctl_gntalloc_alloc_gref", struct ioctl_gntalloc_alloc_gref, index,
             PLANT_OFFSET_ERROR);
    F(ioctl_gntalloc_alloc_gref, gref_ids[0]);

    S(ioctl_gntalloc_dealloc_gref);
    F(ioctl_gntalloc_dealloc_gref, index);
    F(ioctl_gntalloc_dealloc_gref, count);

    S(ioctl_gntalloc_unmap_notify);
    F(ioctl_gntalloc_unmap_notify, index);
    F(ioctl_gntalloc_unmap_notify, action);
    F(ioctl_gntalloc_unmap_notify, event_channel_port);

    I(IOCTL_GNTALLOC_ALLOC_GREF);
    I(IOCTL_GNTALLOC_DEALLOC_GREF);
    I(IOCTL_GNTALLOC_SET_UNMAP_NOTIFY);
    I(GNTALLOC_FLAG_WRITABLE);
}

static void evtchn(void)
{
    S(ioctl_evtchn_bind_virq);
    F(ioctl_evtchn_bind_virq, virq);
    S(ioctl_evtchn_bind_interdomain);
    F(ioctl_evtchn_bind_interdomain, remote_domain);
    F(ioctl_evtchn_bind_interdomain, remote_port);
    S(ioctl_evtchn_bind_unbound_port);
    F(ioctl_evtchn_bind_unbound_port, remote_domain);
    S(ioctl_evtchn_unbind);
    F(ioctl_evtchn_unbind, port);
    S(ioctl_evtchn_notify);
    F(ioctl_evtchn_notify, port);
    S(ioctl_evtchn_restrict_domid);
    F(ioctl_evtchn_restrict_domid, domid);

    I(IOCTL_EVTCHN_BIND_VIRQ);
    I(IOCTL_EVTCHN_BIND_INTERDOMAIN);
    I(IOCTL_EVTCHN_BIND_UNBOUND_PORT);
    I(IOCTL_EVTCHN_UNBIND);
    I(IOCTL_EVTCHN_NOTIFY);
    I(IOCTL_EVTCHN_RESET);
    I(IOCTL_EVTCHN_RESTRICT_DOMID);
    INT("EVTCHN_PORT_SIZE", sizeof(evtchn_port_t));
}

static void xenbus_dev(void)
{
    I(IOCTL_XENBUS_BACKEND_EVTCHN);
    I(IOCTL_XENBUS_BACKEND_SETUP);
}

int main(void)
{
    gntdev();
    gntalloc();
    evtchn();
    xenbus_dev();
    return 0;
}
