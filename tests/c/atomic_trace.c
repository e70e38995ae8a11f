/*
 * A stand-in for libatomic.so.1 that performs the same seq-cst loads and stores and
 * records each one, with a copy of the 4 KiB page it touched as it was at that moment.
 *
 * Built with -shared -fPIC and found first through LD_LIBRARY_PATH, it is what
 * pvdisplay.wire.atomics binds to, so a Python process shows which of its index accesses
 * are atomic, with what memory order, in what program order, and what the slots of the
 * page held when each index was published. An index read or written with plain struct
 * access never reaches this library and so is missing from the trace.
 *
 *   atomic_trace_count()   accesses recorded so far (at most TRACE_CAPACITY)
 *   atomic_trace_entry(i)  the i-th access, oldest first
 */
#include <stdint.h>
#include <string.h>

#define PAGE_SIZE 4096
#define TRACE_CAPACITY 256

struct atomic_access {
    uint64_t address;
    uint32_t value;
    int32_t order; /* the __ATOMIC_* memory order the caller asked for */
    int32_t is_store;
    uint8_t page[PAGE_SIZE];
};

static struct atomic_access trace[TRACE_CAPACITY];
static unsigned recorded;

static void record(const volatile void *address, uint32_t value, int order, int is_store)
{
    if (recorded == TRACE_CAPACITY)
        return;
    struct atomic_access *entry = &trace[recorded++];
    uintptr_t where = (uintptr_t)address;
    entry->address = where;
    entry->value = value;
    entry->order = order;
    entry->is_store = is_store;
    /* The whole page holding the index is mapped, whatever else lies in it. */
    memcpy(entry->page, (const void *)(where & ~(uintptr_t)(PAGE_SIZE - 1)), PAGE_SIZE);
}

/* pvdisplay.wire.atomics binds all four when it is imported. The asm labels give them
 * the names gcc reserves for its own builtins. */
uint16_t traced_load_2(const volatile void *p, int order) __asm__("__atomic_load_2");
uint32_t traced_load_4(const volatile void *p, int order) __asm__("__atomic_load_4");
void traced_store_2(volatile void *p, uint16_t value, int order) __asm__("__atomic_store_2");
void traced_store_4(volatile void *p, uint32_t value, int order) __asm__("__atomic_store_4");

uint16_t traced_load_2(const volatile void *p, int order)
{
    uint16_t value = __atomic_load_n((const volatile uint16_t *)p, __ATOMIC_SEQ_CST);
    record(p, value, order, 0);
    return value;
}

uint32_t traced_load_4(const volatile void *p, int order)
{
    uint32_t value = __atomic_load_n((const volatile uint32_t *)p, __ATOMIC_SEQ_CST);
    record(p, value, order, 0);
    return value;
}

void traced_store_2(volatile void *p, uint16_t value, int order)
{
    __atomic_store_n((volatile uint16_t *)p, value, __ATOMIC_SEQ_CST);
    record(p, value, order, 1);
}

void traced_store_4(volatile void *p, uint32_t value, int order)
{
    __atomic_store_n((volatile uint32_t *)p, value, __ATOMIC_SEQ_CST);
    record(p, value, order, 1);
}

unsigned atomic_trace_count(void)
{
    return recorded;
}

const struct atomic_access *atomic_trace_entry(unsigned index)
{
    return index < recorded ? &trace[index] : 0;
}
