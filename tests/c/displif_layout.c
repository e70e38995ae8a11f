/*
 * Reports the compiled layout of every displif.h struct and macro that
 * pvdisplay.wire.displif mirrors, in the records layout_print.h describes.
 *
 * -DPLANT_OFFSET_ERROR=4 reports SET_CONFIG's bpp 4 bytes late (where the
 * header's ASCII diagram draws it) so a test can prove the comparison bites.
 */
#include <stddef.h>
#include <stdint.h>

#include <xen/io/displif.h>

#include "layout_print.h"

#define XEN_PAGE_SIZE (1u << XEN_PAGE_SHIFT)

static void requests(void)
{
    const char *t = "struct xendispl_req";
#define REQ(path) FIELD(t, struct xendispl_req, path)
    SIZEOF(t, struct xendispl_req);
    REQ(id);
    REQ(operation);
    REQ(op.dbuf_create.dbuf_cookie);
    REQ(op.dbuf_create.width);
    REQ(op.dbuf_create.height);
    REQ(op.dbuf_create.bpp);
    REQ(op.dbuf_create.buffer_sz);
    REQ(op.dbuf_create.flags);
    REQ(op.dbuf_create.gref_directory);
    REQ(op.dbuf_create.data_ofs);
    REQ(op.dbuf_destroy.dbuf_cookie);
    REQ(op.fb_attach.dbuf_cookie);
    REQ(op.fb_attach.fb_cookie);
    REQ(op.fb_attach.width);
    REQ(op.fb_attach.height);
    REQ(op.fb_attach.pixel_format);
    REQ(op.fb_detach.fb_cookie);
    REQ(op.set_config.fb_cookie);
    REQ(op.set_config.x);
    REQ(op.set_config.y);
    REQ(op.set_config.width);
    REQ(op.set_config.height);
    FIELD_AT(t, struct xendispl_req, op.set_config.bpp, PLANT_OFFSET_ERROR);
    REQ(op.pg_flip.fb_cookie);
    REQ(op.get_edid.buffer_sz);
    REQ(op.get_edid.gref_directory);
#undef REQ
}

static void responses_and_events(void)
{
    const char *t = "struct xendispl_resp";
    SIZEOF(t, struct xendispl_resp);
    FIELD(t, struct xendispl_resp, id);
    FIELD(t, struct xendispl_resp, operation);
    FIELD(t, struct xendispl_resp, status);
    FIELD(t, struct xendispl_resp, op.get_edid.edid_sz);

    t = "struct xendispl_evt";
    SIZEOF(t, struct xendispl_evt);
    FIELD(t, struct xendispl_evt, id);
    FIELD(t, struct xendispl_evt, type);
    FIELD(t, struct xendispl_evt, op.pg_flip.fb_cookie);
}

static void pages(void)
{
    const char *t = "struct xendispl_event_page";
    SIZEOF(t, struct xendispl_event_page);
    FIELD(t, struct xendispl_event_page, in_cons);
    FIELD(t, struct xendispl_event_page, in_prod);

    t = "struct xendispl_page_directory";
    SIZEOF(t, struct xendispl_page_directory);
    FIELD(t, struct xendispl_page_directory, gref_dir_next_page);
    /* gref[] is variable length: report one element. */
    FIELD(t, struct xendispl_page_directory, gref[0]);

    INT("PAGE_SIZE", XEN_PAGE_SIZE);
    INT("GREFS_PER_DIRECTORY_PAGE",
        (XEN_PAGE_SIZE - offsetof(struct xendispl_page_directory, gref)) /
            sizeof(grant_ref_t));
    INT("EVENT_PAGE_SIZE", XENDISPL_EVENT_PAGE_SIZE);
    INT("IN_RING_OFFS", XENDISPL_IN_RING_OFFS);
    INT("IN_RING_SIZE", XENDISPL_IN_RING_SIZE);
    INT("IN_RING_LEN", XENDISPL_IN_RING_LEN);
    INT("IN_CONS_OFFSET", offsetof(struct xendispl_event_page, in_cons));
    INT("IN_PROD_OFFSET", offsetof(struct xendispl_event_page, in_prod));
    INT("REQUEST_SIZE", sizeof(struct xendispl_req));
    INT("RESPONSE_SIZE", sizeof(struct xendispl_resp));
    INT("EVENT_SIZE", sizeof(struct xendispl_evt));
}

static void constants(void)
{
    STR("PROTOCOL_VERSION", XENDISPL_PROTOCOL_VERSION);
    INT("PROTOCOL_VERSION_INT", XENDISPL_PROTOCOL_VERSION_INT);
    INT("Operation.DBUF_CREATE", XENDISPL_OP_DBUF_CREATE);
    INT("Operation.DBUF_DESTROY", XENDISPL_OP_DBUF_DESTROY);
    INT("Operation.FB_ATTACH", XENDISPL_OP_FB_ATTACH);
    INT("Operation.FB_DETACH", XENDISPL_OP_FB_DETACH);
    INT("Operation.SET_CONFIG", XENDISPL_OP_SET_CONFIG);
    INT("Operation.PG_FLIP", XENDISPL_OP_PG_FLIP);
    INT("Operation.GET_EDID", XENDISPL_OP_GET_EDID);
    INT("EventType.PG_FLIP", XENDISPL_EVT_PG_FLIP);
    STR("DRIVER_NAME", XENDISPL_DRIVER_NAME);
    STR("LIST_SEPARATOR", XENDISPL_LIST_SEPARATOR);
    STR("RESOLUTION_SEPARATOR", XENDISPL_RESOLUTION_SEPARATOR);
    STR("FIELD_BE_VERSIONS", XENDISPL_FIELD_BE_VERSIONS);
    STR("FIELD_FE_VERSION", XENDISPL_FIELD_FE_VERSION);
    STR("FIELD_REQ_RING_REF", XENDISPL_FIELD_REQ_RING_REF);
    STR("FIELD_REQ_CHANNEL", XENDISPL_FIELD_REQ_CHANNEL);
    STR("FIELD_EVT_RING_REF", XENDISPL_FIELD_EVT_RING_REF);
    STR("FIELD_EVT_CHANNEL", XENDISPL_FIELD_EVT_CHANNEL);
    STR("FIELD_RESOLUTION", XENDISPL_FIELD_RESOLUTION);
    STR("FIELD_BE_ALLOC", XENDISPL_FIELD_BE_ALLOC);
    STR("FIELD_UNIQUE_ID", XENDISPL_FIELD_UNIQUE_ID);
    INT("EDID_BLOCK_SIZE", XENDISPL_EDID_BLOCK_SIZE);
    INT("EDID_BLOCK_COUNT", XENDISPL_EDID_BLOCK_COUNT);
    INT("EDID_MAX_SIZE", XENDISPL_EDID_MAX_SIZE);
    INT("DBUF_FLG_REQ_ALLOC", XENDISPL_DBUF_FLG_REQ_ALLOC);
}

int main(void)
{
    requests();
    responses_and_events();
    pages();
    constants();
    return 0;
}
