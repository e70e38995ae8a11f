/* Prints every xs_wire.h number pvdisplay mirrors, one "name value" per line. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <xen/io/xs_wire.h>

#define SHOW(name, value) printf("%s %lld\n", name, (long long)(value))
#define TYPE(t) SHOW(#t, t)

int main(void)
{
    TYPE(XS_CONTROL); TYPE(XS_DEBUG); TYPE(XS_DIRECTORY); TYPE(XS_READ);
    TYPE(XS_GET_PERMS); TYPE(XS_WATCH); TYPE(XS_UNWATCH);
    TYPE(XS_TRANSACTION_START); TYPE(XS_TRANSACTION_END); TYPE(XS_INTRODUCE);
    TYPE(XS_RELEASE); TYPE(XS_GET_DOMAIN_PATH); TYPE(XS_WRITE); TYPE(XS_MKDIR);
    TYPE(XS_RM); TYPE(XS_SET_PERMS); TYPE(XS_WATCH_EVENT); TYPE(XS_ERROR);
    TYPE(XS_IS_DOMAIN_INTRODUCED); TYPE(XS_RESUME); TYPE(XS_SET_TARGET);
    TYPE(XS_RESET_WATCHES); TYPE(XS_DIRECTORY_PART); TYPE(XS_TYPE_COUNT);
    TYPE(XS_INVALID);
    SHOW("sizeof.xsd_sockmsg", sizeof(struct xsd_sockmsg));
    SHOW("offsetof.type", offsetof(struct xsd_sockmsg, type));
    SHOW("offsetof.req_id", offsetof(struct xsd_sockmsg, req_id));
    SHOW("offsetof.tx_id", offsetof(struct xsd_sockmsg, tx_id));
#ifdef PLANT_OFFSET_ERROR
    SHOW("offsetof.len", offsetof(struct xsd_sockmsg, len) + 1);
#else
    SHOW("offsetof.len", offsetof(struct xsd_sockmsg, len));
#endif
    SHOW("XS_WATCH_PATH", XS_WATCH_PATH);
    SHOW("XS_WATCH_TOKEN", XS_WATCH_TOKEN);
    SHOW("XENSTORE_PAYLOAD_MAX", XENSTORE_PAYLOAD_MAX);
    SHOW("XENSTORE_ABS_PATH_MAX", XENSTORE_ABS_PATH_MAX);
    SHOW("XENSTORE_REL_PATH_MAX", XENSTORE_REL_PATH_MAX);
    printf("XS_WRITE_NONE %s\nXS_WRITE_CREATE %s\nXS_WRITE_CREATE_EXCL %s\n",
           XS_WRITE_NONE, XS_WRITE_CREATE, XS_WRITE_CREATE_EXCL);
    for (size_t i = 0; i < sizeof(xsd_errors) / sizeof(xsd_errors[0]); i++)
        printf("error.%zu %s %d\n", i, xsd_errors[i].errstring, xsd_errors[i].errnum);
    return 0;
}
