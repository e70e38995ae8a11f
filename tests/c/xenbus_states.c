/* Prints every XenbusState name and value from the real xenbus.h. */
#include <stdio.h>
#include <xen/io/xenbus.h>

#define STATE(s) printf("%s %d\n", #s, s)

int main(void)
{
    STATE(XenbusStateUnknown); STATE(XenbusStateInitialising);
    STATE(XenbusStateInitWait); STATE(XenbusStateInitialised);
    STATE(XenbusStateConnected); STATE(XenbusStateClosing);
    STATE(XenbusStateClosed); STATE(XenbusStateReconfiguring);
    STATE(XenbusStateReconfigured);
    return 0;
}
