/*
 * Reports the compiled layout of the split-ring structs and flags of linux/virtio_ring.h
 * that pvdisplay.virtio.virtqueue mirrors, in the records layout_print.h describes.
 */
#include <stddef.h>
#include <stdint.h>

#include <linux/virtio_ring.h>

#include "layout_print.h"

int main(void)
{
    const char *t = "struct vring_desc";
    SIZEOF(t, struct vring_desc);
    FIELD(t, struct vring_desc, addr);
    FIELD(t, struct vring_desc, len);
    FIELD(t, struct vring_desc, flags);
    FIELD(t, struct vring_desc, next);

    t = "struct vring_avail";
    SIZEOF(t, struct vring_avail);
    FIELD(t, struct vring_avail, flags);
    FIELD(t, struct vring_avail, idx);

    t = "struct vring_used_elem";
    SIZEOF(t, struct vring_used_elem);
    FIELD(t, struct vring_used_elem, id);
    FIELD(t, struct vring_used_elem, len);

    t = "struct vring_used";
    SIZEOF(t, struct vring_used);
    FIELD(t, struct vring_used, flags);
    FIELD(t, struct vring_used, idx);

    INT("VRING_DESC_F_NEXT", VRING_DESC_F_NEXT);
    INT("VRING_DESC_F_WRITE", VRING_DESC_F_WRITE);
    INT("VRING_DESC_F_INDIRECT", VRING_DESC_F_INDIRECT);
    INT("VRING_AVAIL_F_NO_INTERRUPT", VRING_AVAIL_F_NO_INTERRUPT);
    INT("VIRTIO_RING_F_INDIRECT_DESC", VIRTIO_RING_F_INDIRECT_DESC);
    INT("VIRTIO_RING_F_EVENT_IDX", VIRTIO_RING_F_EVENT_IDX);
    INT("DESC_ALIGN", VRING_DESC_ALIGN_SIZE);
    INT("AVAIL_ALIGN", VRING_AVAIL_ALIGN_SIZE);
    INT("USED_ALIGN", VRING_USED_ALIGN_SIZE);
    /* The ring offsets of the EVENT_IDX words: after `num` ring entries. */
    struct vring ring;
    static char memory[16 * 8 + 6 + 2 * 8 + 4096 + 6 + 8 * 8];
    vring_init(&ring, 8, memory, 4096);
    INT("AVAIL_RING_OFFSET", offsetof(struct vring_avail, ring));
    INT("USED_RING_OFFSET", offsetof(struct vring_used, ring));
    INT("USED_EVENT_OFFSET_8", (char *)&vring_used_event(&ring) - (char *)ring.avail);
    INT("AVAIL_EVENT_OFFSET_8", (char *)&vring_avail_event(&ring) - (char *)ring.used);
    return 0;
}
