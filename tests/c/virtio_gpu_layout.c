/*
 * Reports the compiled layout of every linux/virtio_gpu.h struct and constant that
 * pvdisplay.virtio.gpu_wire mirrors, in the records layout_print.h describes.
 *
 * -DPLANT_OFFSET_ERROR=N reports TRANSFER_TO_HOST_2D's offset N bytes off, so a test
 * can prove the comparison bites.
 */
#include <stddef.h>
#include <stdint.h>

#include <linux/virtio_gpu.h>

#include "layout_print.h"

#define RECT(ctype, type)                                                      \
    do {                                                                       \
        FIELD(ctype, type, r.x);                                               \
        FIELD(ctype, type, r.y);                                               \
        FIELD(ctype, type, r.width);                                           \
        FIELD(ctype, type, r.height);                                          \
    } while (0)

static void header_and_commands(void)
{
    const char *t = "struct virtio_gpu_ctrl_hdr";
    SIZEOF(t, struct virtio_gpu_ctrl_hdr);
    FIELD(t, struct virtio_gpu_ctrl_hdr, type);
    FIELD(t, struct virtio_gpu_ctrl_hdr, flags);
    FIELD(t, struct virtio_gpu_ctrl_hdr, fence_id);
    FIELD(t, struct virtio_gpu_ctrl_hdr, ctx_id);
    FIELD(t, struct virtio_gpu_ctrl_hdr, ring_idx);

    t = "struct virtio_gpu_resource_create_2d";
    SIZEOF(t, struct virtio_gpu_resource_create_2d);
    FIELD(t, struct virtio_gpu_resource_create_2d, resource_id);
    FIELD(t, struct virtio_gpu_resource_create_2d, format);
    FIELD(t, struct virtio_gpu_resource_create_2d, width);
    FIELD(t, struct virtio_gpu_resource_create_2d, height);

    t = "struct virtio_gpu_resource_unref";
    SIZEOF(t, struct virtio_gpu_resource_unref);
    FIELD(t, struct virtio_gpu_resource_unref, resource_id);

    t = "struct virtio_gpu_set_scanout";
    SIZEOF(t, struct virtio_gpu_set_scanout);
    RECT(t, struct virtio_gpu_set_scanout);
    FIELD(t, struct virtio_gpu_set_scanout, scanout_id);
    FIELD(t, struct virtio_gpu_set_scanout, resource_id);

    t = "struct virtio_gpu_resource_flush";
    SIZEOF(t, struct virtio_gpu_resource_flush);
    RECT(t, struct virtio_gpu_resource_flush);
    FIELD(t, struct virtio_gpu_resource_flush, resource_id);

    t = "struct virtio_gpu_transfer_to_host_2d";
    SIZEOF(t, struct virtio_gpu_transfer_to_host_2d);
    RECT(t, struct virtio_gpu_transfer_to_host_2d);
    FIELD_AT(t, struct virtio_gpu_transfer_to_host_2d, offset, PLANT_OFFSET_ERROR);
    FIELD(t, struct virtio_gpu_transfer_to_host_2d, resource_id);

    t = "struct virtio_gpu_mem_entry";
    SIZEOF(t, struct virtio_gpu_mem_entry);
    FIELD(t, struct virtio_gpu_mem_entry, addr);
    FIELD(t, struct virtio_gpu_mem_entry, length);

    t = "struct virtio_gpu_resource_attach_backing";
    SIZEOF(t, struct virtio_gpu_resource_attach_backing);
    FIELD(t, struct virtio_gpu_resource_attach_backing, resource_id);
    FIELD(t, struct virtio_gpu_resource_attach_backing, nr_entries);

    t = "struct virtio_gpu_resource_detach_backing";
    SIZEOF(t, struct virtio_gpu_resource_detach_backing);
    FIELD(t, struct virtio_gpu_resource_detach_backing, resource_id);

    t = "struct virtio_gpu_cmd_get_edid";
    SIZEOF(t, struct virtio_gpu_cmd_get_edid);
    FIELD(t, struct virtio_gpu_cmd_get_edid, scanout);

    t = "struct virtio_gpu_update_cursor";
    SIZEOF(t, struct virtio_gpu_update_cursor);
    FIELD(t, struct virtio_gpu_update_cursor, pos.scanout_id);
    FIELD(t, struct virtio_gpu_update_cursor, pos.x);
    FIELD(t, struct virtio_gpu_update_cursor, pos.y);
    FIELD(t, struct virtio_gpu_update_cursor, resource_id);
    FIELD(t, struct virtio_gpu_update_cursor, hot_x);
    FIELD(t, struct virtio_gpu_update_cursor, hot_y);
}

#define PMODE(n)                                                               \
    do {                                                                       \
        FIELD(t, struct virtio_gpu_resp_display_info, pmodes[n].r.x);          \
        FIELD(t, struct virtio_gpu_resp_display_info, pmodes[n].r.y);          \
        FIELD(t, struct virtio_gpu_resp_display_info, pmodes[n].r.width);      \
        FIELD(t, struct virtio_gpu_resp_display_info, pmodes[n].r.height);     \
        FIELD(t, struct virtio_gpu_resp_display_info, pmodes[n].enabled);      \
        FIELD(t, struct virtio_gpu_resp_display_info, pmodes[n].flags);        \
    } while (0)

static void answers_and_config(void)
{
    const char *t = "struct virtio_gpu_display_one";
    SIZEOF(t, struct virtio_gpu_display_one);
    RECT(t, struct virtio_gpu_display_one);
    FIELD(t, struct virtio_gpu_display_one, enabled);
    FIELD(t, struct virtio_gpu_display_one, flags);

    t = "struct virtio_gpu_resp_display_info";
    SIZEOF(t, struct virtio_gpu_resp_display_info);
    PMODE(0); PMODE(1); PMODE(2); PMODE(3); PMODE(4); PMODE(5); PMODE(6); PMODE(7);
    PMODE(8); PMODE(9); PMODE(10); PMODE(11); PMODE(12); PMODE(13); PMODE(14); PMODE(15);

    t = "struct virtio_gpu_resp_edid";
    SIZEOF(t, struct virtio_gpu_resp_edid);
    FIELD(t, struct virtio_gpu_resp_edid, size);
    INT("EDID_BUFFER_SIZE", sizeof(((struct virtio_gpu_resp_edid *)0)->edid));
    INT("EDID_BUFFER_OFFSET", offsetof(struct virtio_gpu_resp_edid, edid));

    t = "struct virtio_gpu_config";
    SIZEOF(t, struct virtio_gpu_config);
    FIELD(t, struct virtio_gpu_config, events_read);
    FIELD(t, struct virtio_gpu_config, events_clear);
    FIELD(t, struct virtio_gpu_config, num_scanouts);
    FIELD(t, struct virtio_gpu_config, num_capsets);
}

#define CTRL(name) INT("CtrlType." #name, VIRTIO_GPU_##name)
#define FORMAT(name) INT("Format." #name, VIRTIO_GPU_FORMAT_##name)

static void constants(void)
{
    INT("VIRTIO_GPU_F_EDID", VIRTIO_GPU_F_EDID);
    INT("VIRTIO_GPU_FLAG_FENCE", VIRTIO_GPU_FLAG_FENCE);
    INT("VIRTIO_GPU_FLAG_INFO_RING_IDX", VIRTIO_GPU_FLAG_INFO_RING_IDX);
    INT("VIRTIO_GPU_MAX_SCANOUTS", VIRTIO_GPU_MAX_SCANOUTS);
    INT("VIRTIO_GPU_EVENT_DISPLAY", VIRTIO_GPU_EVENT_DISPLAY);

    CTRL(CMD_GET_DISPLAY_INFO);
    CTRL(CMD_RESOURCE_CREATE_2D);
    CTRL(CMD_RESOURCE_UNREF);
    CTRL(CMD_SET_SCANOUT);
    CTRL(CMD_RESOURCE_FLUSH);
    CTRL(CMD_TRANSFER_TO_HOST_2D);
    CTRL(CMD_RESOURCE_ATTACH_BACKING);
    CTRL(CMD_RESOURCE_DETACH_BACKING);
    CTRL(CMD_GET_CAPSET_INFO);
    CTRL(CMD_GET_CAPSET);
    CTRL(CMD_GET_EDID);
    CTRL(CMD_UPDATE_CURSOR);
    CTRL(CMD_MOVE_CURSOR);
    CTRL(RESP_OK_NODATA);
    CTRL(RESP_OK_DISPLAY_INFO);
    CTRL(RESP_OK_EDID);
    CTRL(RESP_ERR_UNSPEC);
    CTRL(RESP_ERR_OUT_OF_MEMORY);
    CTRL(RESP_ERR_INVALID_SCANOUT_ID);
    CTRL(RESP_ERR_INVALID_RESOURCE_ID);
    CTRL(RESP_ERR_INVALID_CONTEXT_ID);
    CTRL(RESP_ERR_INVALID_PARAMETER);

    FORMAT(B8G8R8A8_UNORM);
    FORMAT(B8G8R8X8_UNORM);
    FORMAT(A8R8G8B8_UNORM);
    FORMAT(X8R8G8B8_UNORM);
    FORMAT(R8G8B8A8_UNORM);
    FORMAT(X8B8G8R8_UNORM);
    FORMAT(A8B8G8R8_UNORM);
    FORMAT(R8G8B8X8_UNORM);
}

int main(void)
{
    header_and_commands();
    answers_and_config();
    constants();
    return 0;
}
