/*
 * Prints what gcc makes of xen/io/ring.h's DEFINE_RING_TYPES, as key=value lines
 * that tests/test_ring_layout.py compares with pvdisplay.wire.ring:
 *   - offsetof/sizeof of every struct xen_displif_sring header field,
 *   - __RING_SIZE / __CONST_RING_SIZE of the displif ring and of rings with
 *     other slot sizes over several area sizes,
 *   - the header bytes SHARED_RING_INIT leaves on a page filled with 0xaa.
 *
 * -DPLANT_WRONG_OFFSET reports rsp_prod 4 bytes late, to show the comparison fails.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <xen/io/displif.h>

#ifdef PLANT_WRONG_OFFSET
#define RSP_PROD_SKEW 4
#else
#define RSP_PROD_SKEW 0
#endif

#define SLOT_RING(n)                        \
    struct slot##n {                        \
        uint8_t bytes[n];                   \
    };                                      \
    DEFINE_RING_TYPES(slot##n, struct slot##n, struct slot##n)

SLOT_RING(8);
SLOT_RING(12);
SLOT_RING(36);
SLOT_RING(100);
SLOT_RING(112);
SLOT_RING(1000);
SLOT_RING(2016);
SLOT_RING(4032);

static _Alignas(4096) unsigned char area[65536];

static const size_t area_sizes[] = {128, 1000, 4096, 8192, 16384, 65536};

#define FIELD(name)                                                             \
    printf("field.%s=%zu,%zu\n", #name, offsetof(struct xen_displif_sring, name), \
           sizeof(((struct xen_displif_sring *)0)->name))

#define RING_SIZES(tag)                                                   \
    do {                                                                  \
        struct tag##_sring *s = (struct tag##_sring *)area;               \
        for (size_t i = 0; i < sizeof(area_sizes) / sizeof(*area_sizes); i++) \
            if (area_sizes[i] >= offsetof(struct tag##_sring, ring) + sizeof(s->ring[0])) \
                printf("ring_size.%zu.%zu=%lu\n", sizeof(s->ring[0]), area_sizes[i], \
                       (unsigned long)__RING_SIZE(s, area_sizes[i]));    \
    } while (0)

int main(void)
{
    struct xen_displif_sring *sring = (struct xen_displif_sring *)area;

    printf("sizeof.RING_IDX=%zu\n", sizeof(RING_IDX));
    printf("sizeof.sring=%zu\n", sizeof(struct xen_displif_sring));
    printf("sizeof.entry=%zu\n", sizeof(union xen_displif_sring_entry));
    printf("offsetof.ring=%zu\n", offsetof(struct xen_displif_sring, ring));
    FIELD(req_prod);
    FIELD(req_event);
    printf("field.rsp_prod=%zu,%zu\n",
           offsetof(struct xen_displif_sring, rsp_prod) + RSP_PROD_SKEW, sizeof(sring->rsp_prod));
    FIELD(rsp_event);
    FIELD(pvt);
    FIELD(__pad);
    printf("const_ring_size.displif.4096=%lu\n",
           (unsigned long)__CONST_RING_SIZE(xen_displif, 4096));

    RING_SIZES(xen_displif);
    RING_SIZES(slot8);
    RING_SIZES(slot12);
    RING_SIZES(slot36);
    RING_SIZES(slot100);
    RING_SIZES(slot112);
    RING_SIZES(slot1000);
    RING_SIZES(slot2016);
    RING_SIZES(slot4032);

    memset(area, 0xaa, 4096);
    SHARED_RING_INIT(sring);
    printf("shared_ring_init=");
    for (size_t i = 0; i < 4096; i++)
        printf("%02x", area[i]);
    printf("\n");
    return 0;
}
