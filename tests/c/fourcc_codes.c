/*
 * Prints the fourcc codes the system headers define for pvdisplay's pixel
 * formats, one "<source> <drm-name> <value>" line each.
 *
 * displif.h defines no pixel-format macros of its own (FB_ATTACH carries a
 * DRM fourcc), so the authorities are DRM's drm_fourcc.h when installed and,
 * always, V4L2's videodev2.h: V4L2 gives seven of the nine DRM formats the
 * same code and the same memory layout (its RGB565 and BGR24 use other codes).
 */
#include <stdio.h>
#include <linux/videodev2.h>

#if __has_include(<drm/drm_fourcc.h>)
#include <drm/drm_fourcc.h>
#define HAVE_DRM_FOURCC 1
#elif __has_include(<libdrm/drm_fourcc.h>)
#include <libdrm/drm_fourcc.h>
#define HAVE_DRM_FOURCC 1
#endif

#define SHOW(source, name, value) printf("%s %s %u\n", source, name, (unsigned)(value))

int main(void)
{
    SHOW("v4l2", "XRGB8888", V4L2_PIX_FMT_XBGR32);
    SHOW("v4l2", "ARGB8888", V4L2_PIX_FMT_ABGR32);
    SHOW("v4l2", "XRGB4444", V4L2_PIX_FMT_XRGB444);
    SHOW("v4l2", "ARGB4444", V4L2_PIX_FMT_ARGB444);
    SHOW("v4l2", "XRGB1555", V4L2_PIX_FMT_XRGB555);
    SHOW("v4l2", "ARGB1555", V4L2_PIX_FMT_ARGB555);
    SHOW("v4l2", "YUYV", V4L2_PIX_FMT_YUYV);
#ifdef HAVE_DRM_FOURCC
    SHOW("drm", "RGB565", DRM_FORMAT_RGB565);
    SHOW("drm", "RGB888", DRM_FORMAT_RGB888);
    SHOW("drm", "XRGB8888", DRM_FORMAT_XRGB8888);
    SHOW("drm", "ARGB8888", DRM_FORMAT_ARGB8888);
    SHOW("drm", "XRGB4444", DRM_FORMAT_XRGB4444);
    SHOW("drm", "ARGB4444", DRM_FORMAT_ARGB4444);
    SHOW("drm", "XRGB1555", DRM_FORMAT_XRGB1555);
    SHOW("drm", "ARGB1555", DRM_FORMAT_ARGB1555);
    SHOW("drm", "YUYV", DRM_FORMAT_YUYV);
#endif
    return 0;
}
