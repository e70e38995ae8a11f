/*
 * One end of a displif ring driven by the real xen/io/ring.h macros, on a page
 * shared with a Python process through an inherited memfd.
 *
 *   ring_peer script front|back FD START
 *       Lockstep: executes one operation per stdin line and answers one line each;
 *       a "." line is echoed and flushes, ending the turn. Operations:
 *         front: produce K | push | consume K | final | forge V
 *         back:  consume K | respond K | push | final | forge V
 *   ring_peer stream front|back FD START COUNT EVT_IN EVT_OUT SEED
 *       Free-running: moves COUNT requests and COUNT responses, notifying the peer
 *       by writing a byte to EVT_OUT and sleeping on EVT_IN, like an event channel.
 *
 * A front initialises the shared ring with every index at START and prints "ready".
 * Message n carries payload(n) (see below); consumers check every byte.
 * -DPLANT_FLIP_NOTIFY=N inverts the Nth push's notify decision (script mode), to show
 * the differential test notices.
 */
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ring.h's legacy interface maps xen_mb/xen_rmb/xen_wmb to these. */
#define mb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define wmb() __atomic_thread_fence(__ATOMIC_RELEASE)

#include <xen/io/displif.h>

#define PAGE_SIZE 4096
#define STALL_MS 30000

_Static_assert(sizeof(union xen_displif_sring_entry) == 64, "displif slot is 64 bytes");

static struct xen_displif_sring *sring;
static struct xen_displif_front_ring front;
static struct xen_displif_back_ring back;
static unsigned long pushes;

static void die(const char *what)
{
    fprintf(stderr, "ring_peer: %s: %s\n", what, errno ? strerror(errno) : "failed");
    exit(2);
}

/* Message `seq` of a direction: seq, then a filler word derived from it. */
static void payload(uint64_t seq, int is_response, unsigned char out[64])
{
    uint64_t word = seq * 0x9E3779B97F4A7C15ull + (uint64_t)is_response;
    memcpy(out, &seq, sizeof(seq));
    for (size_t i = 8; i < 64; i++)
        out[i] = (unsigned char)(word >> (8 * (i % 8)));
}

static int payload_ok(uint64_t seq, int is_response, const void *got)
{
    unsigned char want[64];
    payload(seq, is_response, want);
    return memcmp(want, got, sizeof(want)) == 0;
}

static int decided(int notify)
{
    pushes++;
#ifdef PLANT_FLIP_NOTIFY
    if (pushes == PLANT_FLIP_NOTIFY)
        return !notify;
#endif
    return notify;
}

static void attach(const char *role, int fd, RING_IDX start)
{
    void *page = mmap(NULL, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (page == MAP_FAILED)
        die("mmap");
    sring = page;
    if (strcmp(role, "front") == 0) {
        SHARED_RING_INIT(sring);
        sring->req_prod = sring->rsp_prod = start;
        sring->req_event = sring->rsp_event = start + 1;
        FRONT_RING_ATTACH(&front, sring, start, PAGE_SIZE);
        printf("ready\n");
        fflush(stdout);
    } else if (strcmp(role, "back") == 0) {
        BACK_RING_ATTACH(&back, sring, start, PAGE_SIZE);
    } else {
        die("role must be front or back");
    }
}

/* ---- front operations ---- */

static uint64_t req_seq, rsp_seq; /* next request to send, next response expected */

static unsigned front_produce(unsigned limit)
{
    unsigned n = 0;
    while (n < limit && !RING_FULL(&front)) {
        payload(req_seq++, 0, (unsigned char *)RING_GET_REQUEST(&front, front.req_prod_pvt));
        front.req_prod_pvt++;
        n++;
    }
    return n;
}

static int front_push(void)
{
    int notify;
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&front, notify);
    return decided(notify);
}

/* Returns responses consumed, or -1 after printing what went wrong. */
static long front_consume(unsigned limit)
{
    RING_IDX prod = front.sring->rsp_prod;
    rmb();
    if (RING_RESPONSE_PROD_OVERFLOW(&front, prod)) {
        printf("overflow rsp_prod %#x\n", prod);
        return -1;
    }
    unsigned n = 0;
    while (n < limit && front.rsp_cons != prod) {
        struct xendispl_resp rsp;
        RING_COPY_RESPONSE(&front, front.rsp_cons, &rsp);
        if (!payload_ok(rsp_seq, 1, &rsp)) {
            printf("corrupt response %llu\n", (unsigned long long)rsp_seq);
            return -1;
        }
        rsp_seq++;
        front.rsp_cons++;
        n++;
    }
    return n;
}

static int front_final(void)
{
    int more;
    RING_FINAL_CHECK_FOR_RESPONSES(&front, more);
    return more != 0;
}

/* ---- back operations ---- */

static uint64_t taken, answered; /* requests taken, responses produced */

static long back_consume(unsigned limit)
{
    RING_IDX prod = back.sring->req_prod;
    rmb();
    if (RING_REQUEST_PROD_OVERFLOW(&back, prod)) {
        printf("overflow req_prod %#x\n", prod);
        return -1;
    }
    unsigned n = 0;
    while (n < limit && back.req_cons != prod &&
           !RING_REQUEST_CONS_OVERFLOW(&back, back.req_cons)) {
        struct xendispl_req req;
        RING_COPY_REQUEST(&back, back.req_cons, &req);
        if (!payload_ok(taken, 0, &req)) {
            printf("corrupt request %llu\n", (unsigned long long)taken);
            return -1;
        }
        taken++;
        back.req_cons++;
        n++;
    }
    return n;
}

static unsigned back_respond(unsigned limit)
{
    unsigned n = 0;
    while (n < limit && answered < taken) {
        payload(answered++, 1, (unsigned char *)RING_GET_RESPONSE(&back, back.rsp_prod_pvt));
        back.rsp_prod_pvt++;
        n++;
    }
    return n;
}

static int back_push(void)
{
    int notify;
    RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&back, notify);
    return decided(notify);
}

static int back_final(void)
{
    int more;
    RING_FINAL_CHECK_FOR_REQUESTS(&back, more);
    return more != 0;
}

/* ---- lockstep script ---- */

static int script(int is_front)
{
    char line[128], op[32];
    unsigned long arg;
    while (fgets(line, sizeof(line), stdin)) {
        int fields = sscanf(line, "%31s %lu", op, &arg);
        if (fields < 1)
            die("empty command");
        if (strcmp(op, ".") == 0) {
            printf(".\n");
            fflush(stdout);
        } else if (strcmp(op, "push") == 0) {
            printf("notify %d\n", is_front ? front_push() : back_push());
        } else if (strcmp(op, "final") == 0) {
            printf("final %d\n", is_front ? front_final() : back_final());
        } else if (fields != 2) {
            die(line);
        } else if (strcmp(op, "forge") == 0) {
            if (is_front)
                sring->req_prod = (RING_IDX)arg;
            else
                sring->rsp_prod = (RING_IDX)arg;
            printf("forged\n");
        } else if (strcmp(op, "produce") == 0 && is_front) {
            printf("produced %u\n", front_produce(arg));
        } else if (strcmp(op, "consume") == 0) {
            long n = is_front ? front_consume(arg) : back_consume(arg);
            if (n >= 0)
                printf("consumed %ld\n", n);
        } else if (strcmp(op, "respond") == 0 && !is_front) {
            printf("responded %u\n", back_respond(arg));
        } else {
            die(line);
        }
    }
    return 0;
}

/* ---- free-running stream ---- */

static uint64_t rng_state;
static unsigned long notifies, waits, events;

static unsigned batch(unsigned ring_size)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return 1 + (unsigned)(rng_state % ring_size);
}

static void notify_peer(int notify, int evt_out)
{
    if (notify) {
        notifies++;
        if (write(evt_out, "!", 1) != 1)
            die("write event");
    }
}

static void sleep_on(int evt_in)
{
    struct pollfd pfd = {.fd = evt_in, .events = POLLIN};
    char buf[64];
    waits++;
    int ready = poll(&pfd, 1, STALL_MS);
    if (ready < 0)
        die("poll");
    if (ready == 0) {
        fprintf(stderr, "ring_peer: stalled: no event for %d ms (lost notification?)\n",
                STALL_MS);
        exit(3);
    }
    ssize_t got = read(evt_in, buf, sizeof(buf));
    if (got <= 0)
        die("read event (peer gone?)");
    events += (unsigned long)got;
}

static int stream_front(uint64_t count, int evt_in, int evt_out)
{
    while (rsp_seq < count) {
        unsigned room = count - req_seq < RING_SIZE(&front) ? count - req_seq : RING_SIZE(&front);
        unsigned produced = room ? front_produce(batch(room)) : 0;
        if (produced)
            notify_peer(front_push(), evt_out);
        long consumed = front_consume(RING_SIZE(&front));
        if (consumed < 0)
            return 1;
        if (produced || consumed || rsp_seq == count)
            continue;
        if (!front_final())
            sleep_on(evt_in);
    }
    return 0;
}

static int stream_back(uint64_t count, int evt_in, int evt_out)
{
    while (answered < count) {
        long consumed = back_consume(RING_SIZE(&back));
        if (consumed < 0)
            return 1;
        while (answered < taken) {
            back_respond(batch(RING_SIZE(&back)));
            notify_peer(back_push(), evt_out);
        }
        if (consumed || answered == count)
            continue;
        if (!back_final())
            sleep_on(evt_in);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 5)
        die("usage: ring_peer script|stream front|back FD START ...");
    int is_front = strcmp(argv[2], "front") == 0;
    attach(argv[2], atoi(argv[3]), (RING_IDX)strtoul(argv[4], NULL, 0));
    if (strcmp(argv[1], "script") == 0)
        return script(is_front);
    if (strcmp(argv[1], "stream") != 0 || argc != 9)
        die("usage: ring_peer stream front|back FD START COUNT EVT_IN EVT_OUT SEED");
    uint64_t count = strtoull(argv[5], NULL, 0);
    int evt_in = atoi(argv[6]), evt_out = atoi(argv[7]);
    rng_state = strtoull(argv[8], NULL, 0) | 1;
    int rc = is_front ? stream_front(count, evt_in, evt_out)
                      : stream_back(count, evt_in, evt_out);
    printf("done pushes=%lu notifies=%lu waits=%lu events=%lu\n", pushes, notifies, waits,
           events);
    return rc;
}
