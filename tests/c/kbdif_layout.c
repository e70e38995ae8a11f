/*
 * Reports the compiled layout of every kbdif.h union, struct and macro that
 * pvdisplay.wire.kbdif mirrors, in the records layout_print.h describes.
 *
 * -DPLANT_OFFSET_ERROR=-2 reports the key event's keycode 2 bytes early so a
 * test can prove the comparison bites.
 */
#include <stddef.h>
#include <stdint.h>

#include <xen/io/kbdif.h>

#include "layout_print.h"

static void in_events(void)
{
    const char *t = "union xenkbd_in_event";
#define IN(path) FIELD(t, union xenkbd_in_event, path)
    SIZEOF(t, union xenkbd_in_event);
    IN(type);
    IN(motion.type);
    IN(motion.rel_x);
    IN(motion.rel_y);
    IN(motion.rel_z);
    IN(key.type);
    IN(key.pressed);
    FIELD_AT(t, union xenkbd_in_event, key.keycode, PLANT_OFFSET_ERROR);
    IN(pos.type);
    IN(pos.abs_x);
    IN(pos.abs_y);
    IN(pos.rel_z);
    IN(mtouch.type);
    IN(mtouch.event_type);
    IN(mtouch.contact_id);
    IN(mtouch.u.pos.abs_x);
    IN(mtouch.u.pos.abs_y);
    IN(mtouch.u.shape.major);
    IN(mtouch.u.shape.minor);
    IN(mtouch.u.orientation);
#undef IN
}

static void out_events_and_page(void)
{
    const char *t = "union xenkbd_out_event";
    SIZEOF(t, union xenkbd_out_event);
    FIELD(t, union xenkbd_out_event, type);

    t = "struct xenkbd_page";
    SIZEOF(t, struct xenkbd_page);
    FIELD(t, struct xenkbd_page, in_cons);
    FIELD(t, struct xenkbd_page, in_prod);
    FIELD(t, struct xenkbd_page, out_cons);
    FIELD(t, struct xenkbd_page, out_prod);

    INT("IN_CONS_OFFSET", offsetof(struct xenkbd_page, in_cons));
    INT("IN_PROD_OFFSET", offsetof(struct xenkbd_page, in_prod));
    INT("OUT_CONS_OFFSET", offsetof(struct xenkbd_page, out_cons));
    INT("OUT_PROD_OFFSET", offsetof(struct xenkbd_page, out_prod));
    INT("IN_EVENT_SIZE", XENKBD_IN_EVENT_SIZE);
    INT("OUT_EVENT_SIZE", XENKBD_OUT_EVENT_SIZE);
    INT("IN_RING_OFFS", XENKBD_IN_RING_OFFS);
    INT("IN_RING_SIZE", XENKBD_IN_RING_SIZE);
    INT("IN_RING_LEN", XENKBD_IN_RING_LEN);
    INT("OUT_RING_OFFS", XENKBD_OUT_RING_OFFS);
    INT("OUT_RING_SIZE", XENKBD_OUT_RING_SIZE);
    INT("OUT_RING_LEN", XENKBD_OUT_RING_LEN);
}

static void constants(void)
{
    INT("EventType.MOTION", XENKBD_TYPE_MOTION);
    INT("EventType.RESERVED", XENKBD_TYPE_RESERVED);
    INT("EventType.KEY", XENKBD_TYPE_KEY);
    INT("EventType.POS", XENKBD_TYPE_POS);
    INT("EventType.MTOUCH", XENKBD_TYPE_MTOUCH);
    INT("MtEventType.DOWN", XENKBD_MT_EV_DOWN);
    INT("MtEventType.UP", XENKBD_MT_EV_UP);
    INT("MtEventType.MOTION", XENKBD_MT_EV_MOTION);
    INT("MtEventType.SYN", XENKBD_MT_EV_SYN);
    INT("MtEventType.SHAPE", XENKBD_MT_EV_SHAPE);
    INT("MtEventType.ORIENT", XENKBD_MT_EV_ORIENT);
    STR("DRIVER_NAME", XENKBD_DRIVER_NAME);
    STR("FIELD_FEAT_DSBL_KEYBRD", XENKBD_FIELD_FEAT_DSBL_KEYBRD);
    STR("FIELD_FEAT_DSBL_POINTER", XENKBD_FIELD_FEAT_DSBL_POINTER);
    STR("FIELD_FEAT_ABS_POINTER", XENKBD_FIELD_FEAT_ABS_POINTER);
    STR("FIELD_FEAT_RAW_POINTER", XENKBD_FIELD_FEAT_RAW_POINTER);
    STR("FIELD_FEAT_MTOUCH", XENKBD_FIELD_FEAT_MTOUCH);
    STR("FIELD_REQ_ABS_POINTER", XENKBD_FIELD_REQ_ABS_POINTER);
    STR("FIELD_REQ_RAW_POINTER", XENKBD_FIELD_REQ_RAW_POINTER);
    STR("FIELD_REQ_MTOUCH", XENKBD_FIELD_REQ_MTOUCH);
    STR("FIELD_RING_GREF", XENKBD_FIELD_RING_GREF);
    STR("FIELD_EVT_CHANNEL", XENKBD_FIELD_EVT_CHANNEL);
    STR("FIELD_WIDTH", XENKBD_FIELD_WIDTH);
    STR("FIELD_HEIGHT", XENKBD_FIELD_HEIGHT);
    STR("FIELD_MT_WIDTH", XENKBD_FIELD_MT_WIDTH);
    STR("FIELD_MT_HEIGHT", XENKBD_FIELD_MT_HEIGHT);
    STR("FIELD_MT_NUM_CONTACTS", XENKBD_FIELD_MT_NUM_CONTACTS);
    STR("FIELD_UNIQUE_ID", XENKBD_FIELD_UNIQUE_ID);
    STR("FIELD_RING_REF", XENKBD_FIELD_RING_REF);
}

int main(void)
{
    in_events();
    out_events_and_page();
    constants();
    return 0;
}
