/*
 * A C peer for the displif codec tests. Reads one command per line on stdin,
 * fills the real displif.h structs through their members (never by offset)
 * and answers one line on stdout:
 *
 *   dbuf_create ID COOKIE WIDTH HEIGHT BPP BUFFER_SZ FLAGS GREF_DIR DATA_OFS
 *   dbuf_destroy ID COOKIE
 *   fb_attach ID DBUF_COOKIE FB_COOKIE WIDTH HEIGHT PIXEL_FORMAT
 *   fb_detach ID FB_COOKIE
 *   set_config ID FB_COOKIE X Y WIDTH HEIGHT BPP
 *   pg_flip ID FB_COOKIE
 *   get_edid ID BUFFER_SZ GREF_DIR
 *   resp ID OPERATION STATUS EDID_SZ
 *   evt ID FB_COOKIE                        -> hex of the 64-byte packet
 *   in_ring_ref INDEX                       -> offset of XENDISPL_IN_RING_REF
 *   page_directory NDIR DIR... NGREFS GREF... -> hex of NDIR directory pages
 *
 * -DPLANT_DIAGRAM_BPP stores SET_CONFIG's bpp where the header's ASCII
 * diagram draws it (offset 36) so a test can prove the byte comparison bites.
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xen/io/displif.h>

#define XEN_PAGE_SIZE (1u << XEN_PAGE_SHIFT)

static char *cursor;

static unsigned long long next_u(void)
{
    return strtoull(strtok_r(NULL, " \n", &cursor), NULL, 10);
}

static long long next_s(void)
{
    return strtoll(strtok_r(NULL, " \n", &cursor), NULL, 10);
}

static void print_hex(const void *data, size_t size)
{
    const unsigned char *bytes = data;
    for (size_t i = 0; i < size; i++)
        printf("%02x", bytes[i]);
    putchar('\n');
}

static void request(const char *kind)
{
    struct xendispl_req req;
    memset(&req, 0, sizeof(req));
    req.id = next_u();
    if (!strcmp(kind, "dbuf_create")) {
        req.operation = XENDISPL_OP_DBUF_CREATE;
        req.op.dbuf_create.dbuf_cookie = next_u();
        req.op.dbuf_create.width = next_u();
        req.op.dbuf_create.height = next_u();
        req.op.dbuf_create.bpp = next_u();
        req.op.dbuf_create.buffer_sz = next_u();
        req.op.dbuf_create.flags = next_u();
        req.op.dbuf_create.gref_directory = next_u();
        req.op.dbuf_create.data_ofs = next_u();
    } else if (!strcmp(kind, "dbuf_destroy")) {
        req.operation = XENDISPL_OP_DBUF_DESTROY;
        req.op.dbuf_destroy.dbuf_cookie = next_u();
    } else if (!strcmp(kind, "fb_attach")) {
        req.operation = XENDISPL_OP_FB_ATTACH;
        req.op.fb_attach.dbuf_cookie = next_u();
        req.op.fb_attach.fb_cookie = next_u();
        req.op.fb_attach.width = next_u();
        req.op.fb_attach.height = next_u();
        req.op.fb_attach.pixel_format = next_u();
    } else if (!strcmp(kind, "fb_detach")) {
        req.operation = XENDISPL_OP_FB_DETACH;
        req.op.fb_detach.fb_cookie = next_u();
    } else if (!strcmp(kind, "set_config")) {
        req.operation = XENDISPL_OP_SET_CONFIG;
        req.op.set_config.fb_cookie = next_u();
        req.op.set_config.x = next_u();
        req.op.set_config.y = next_u();
        req.op.set_config.width = next_u();
        req.op.set_config.height = next_u();
#ifdef PLANT_DIAGRAM_BPP
        uint32_t bpp = next_u();
        memcpy((char *)&req + 36, &bpp, sizeof(bpp));
#else
        req.op.set_config.bpp = next_u();
#endif
    } else if (!strcmp(kind, "pg_flip")) {
        req.operation = XENDISPL_OP_PG_FLIP;
        req.op.pg_flip.fb_cookie = next_u();
    } else if (!strcmp(kind, "get_edid")) {
        req.operation = XENDISPL_OP_GET_EDID;
        req.op.get_edid.buffer_sz = next_u();
        req.op.get_edid.gref_directory = next_u();
    } else {
        fprintf(stderr, "unknown command %s\n", kind);
        exit(2);
    }
    print_hex(&req, sizeof(req));
}

static void response(void)
{
    struct xendispl_resp resp;
    memset(&resp, 0, sizeof(resp));
    resp.id = next_u();
    resp.operation = next_u();
    resp.status = next_s();
    resp.op.get_edid.edid_sz = next_u();
    print_hex(&resp, sizeof(resp));
}

static void event(void)
{
    struct xendispl_evt evt;
    memset(&evt, 0, sizeof(evt));
    evt.id = next_u();
    evt.type = XENDISPL_EVT_PG_FLIP;
    evt.op.pg_flip.fb_cookie = next_u();
    print_hex(&evt, sizeof(evt));
}

static void in_ring_ref(void)
{
    static char page[XENDISPL_EVENT_PAGE_SIZE];
    uint32_t index = next_u();
    printf("%td\n", (char *)&XENDISPL_IN_RING_REF(page, index) - page);
}

static void page_directory(void)
{
    size_t ndir = next_u();
    grant_ref_t *dir_refs = calloc(ndir, sizeof(*dir_refs));
    for (size_t i = 0; i < ndir; i++)
        dir_refs[i] = next_u();
    size_t ngrefs = next_u();
    size_t per_page = (XEN_PAGE_SIZE - offsetof(struct xendispl_page_directory, gref)) /
                      sizeof(grant_ref_t);
    unsigned char *pages = calloc(ndir, XEN_PAGE_SIZE);
    size_t done = 0;
    for (size_t i = 0; i < ndir; i++) {
        struct xendispl_page_directory *dir = (void *)(pages + i * XEN_PAGE_SIZE);
        grant_ref_t *slot = dir->gref;
        dir->gref_dir_next_page = i + 1 < ndir ? dir_refs[i + 1] : 0;
        for (size_t j = 0; j < per_page && done < ngrefs; j++, done++)
            slot[j] = next_u();
    }
    print_hex(pages, ndir * XEN_PAGE_SIZE);
    free(pages);
    free(dir_refs);
}

int main(void)
{
    char *line = NULL;
    size_t capacity = 0;
    while (getline(&line, &capacity, stdin) > 0) {
        char *kind = strtok_r(line, " \n", &cursor);
        if (!strcmp(kind, "resp"))
            response();
        else if (!strcmp(kind, "evt"))
            event();
        else if (!strcmp(kind, "in_ring_ref"))
            in_ring_ref();
        else if (!strcmp(kind, "page_directory"))
            page_directory();
        else
            request(kind);
        fflush(stdout);
    }
    free(line);
    return 0;
}
