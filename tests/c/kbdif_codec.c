/*
 * A C peer for the kbdif codec tests. Reads one command per line on stdin,
 * fills the real kbdif.h unions through their members (never by offset) and
 * answers one line on stdout:
 *
 *   motion REL_X REL_Y REL_Z
 *   key PRESSED KEYCODE
 *   pos ABS_X ABS_Y REL_Z
 *   mt_down CONTACT ABS_X ABS_Y      mt_motion CONTACT ABS_X ABS_Y
 *   mt_up CONTACT                    mt_syn CONTACT
 *   mt_shape CONTACT MAJOR MINOR     mt_orient CONTACT ORIENTATION
 *   out TYPE PAYLOAD_HEX (39 bytes)  -> hex of the 40-byte event
 *   in_ring_ref INDEX                -> offset of XENKBD_IN_RING_REF
 *   out_ring_ref INDEX               -> offset of XENKBD_OUT_RING_REF
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xen/io/kbdif.h>

#define PAGE_SIZE 4096

static char *cursor;

static const char *next_word(void)
{
    return strtok_r(NULL, " \n", &cursor);
}

static long long next_s(void)
{
    return strtoll(next_word(), NULL, 10);
}

static void print_hex(const void *data, size_t size)
{
    const unsigned char *bytes = data;
    for (size_t i = 0; i < size; i++)
        printf("%02x", bytes[i]);
    putchar('\n');
}

static void mtouch(union xenkbd_in_event *event, uint8_t event_type)
{
    event->mtouch.type = XENKBD_TYPE_MTOUCH;
    event->mtouch.event_type = event_type;
    event->mtouch.contact_id = next_s();
}

static void in_event(const char *kind)
{
    union xenkbd_in_event event;
    memset(&event, 0, sizeof(event));
    if (!strcmp(kind, "motion")) {
        event.motion.type = XENKBD_TYPE_MOTION;
        event.motion.rel_x = next_s();
        event.motion.rel_y = next_s();
        event.motion.rel_z = next_s();
    } else if (!strcmp(kind, "key")) {
        event.key.type = XENKBD_TYPE_KEY;
        event.key.pressed = next_s();
        event.key.keycode = next_s();
    } else if (!strcmp(kind, "pos")) {
        event.pos.type = XENKBD_TYPE_POS;
        event.pos.abs_x = next_s();
        event.pos.abs_y = next_s();
        event.pos.rel_z = next_s();
    } else if (!strcmp(kind, "mt_down") || !strcmp(kind, "mt_motion")) {
        mtouch(&event, kind[3] == 'd' ? XENKBD_MT_EV_DOWN : XENKBD_MT_EV_MOTION);
        event.mtouch.u.pos.abs_x = next_s();
        event.mtouch.u.pos.abs_y = next_s();
    } else if (!strcmp(kind, "mt_up")) {
        mtouch(&event, XENKBD_MT_EV_UP);
    } else if (!strcmp(kind, "mt_syn")) {
        mtouch(&event, XENKBD_MT_EV_SYN);
    } else if (!strcmp(kind, "mt_shape")) {
        mtouch(&event, XENKBD_MT_EV_SHAPE);
        event.mtouch.u.shape.major = next_s();
        event.mtouch.u.shape.minor = next_s();
    } else if (!strcmp(kind, "mt_orient")) {
        mtouch(&event, XENKBD_MT_EV_ORIENT);
        event.mtouch.u.orientation = next_s();
    } else {
        fprintf(stderr, "unknown command %s\n", kind);
        exit(2);
    }
    print_hex(&event, sizeof(event));
}

static void out_event(void)
{
    union xenkbd_out_event event;
    memset(&event, 0, sizeof(event));
    event.type = next_s();
    const char *payload = next_word();
    for (size_t i = 1; i < sizeof(event.pad); i++)
        sscanf(payload + 2 * (i - 1), "%2hhx", (unsigned char *)&event.pad[i]);
    print_hex(&event, sizeof(event));
}

int main(void)
{
    static char page[PAGE_SIZE];
    char *line = NULL;
    size_t capacity = 0;
    while (getline(&line, &capacity, stdin) > 0) {
        char *kind = strtok_r(line, " \n", &cursor);
        if (!strcmp(kind, "out")) {
            out_event();
        } else if (!strcmp(kind, "in_ring_ref")) {
            uint32_t index = strtoull(next_word(), NULL, 10);
            printf("%td\n", (char *)&XENKBD_IN_RING_REF(page, index) - page);
        } else if (!strcmp(kind, "out_ring_ref")) {
            uint32_t index = strtoull(next_word(), NULL, 10);
            printf("%td\n", (char *)&XENKBD_OUT_RING_REF(page, index) - page);
        } else {
            in_event(kind);
        }
        fflush(stdout);
    }
    free(line);
    return 0;
}
