/*
 * Printing helpers for the tests/c/<header>_layout.c programs, which report a
 * compiled Xen header one tab-separated record per line:
 *   field  <C type>  <member path>  <offset>  <size>  <signed>
 *   sizeof <C type>  <bytes>
 *   int    <Python name>  <value>
 *   str    <Python name>  <value>
 * tests/test_displif_kbdif_layout.py reads them.
 *
 * -DPLANT_OFFSET_ERROR=N moves the one member a program reports with
 * FIELD_AT(..., PLANT_OFFSET_ERROR) by N bytes (N may be negative), so a test
 * can prove the comparison bites.
 */
#ifndef LAYOUT_PRINT_H
#define LAYOUT_PRINT_H

#include <stddef.h>
#include <stdio.h>

#ifndef PLANT_OFFSET_ERROR
#define PLANT_OFFSET_ERROR 0
#endif

#define MEMBER(type, path) (((type *)0)->path)
#define IS_SIGNED(lvalue) ((__typeof__(lvalue))-1 < 0)

#define FIELD_AT(ctype, type, path, shift)                                     \
    printf("field\t%s\t%s\t%lld\t%zu\t%d\n", ctype, #path,                     \
           (long long)offsetof(type, path) + (shift),                          \
           sizeof(MEMBER(type, path)), IS_SIGNED(MEMBER(type, path)))
#define FIELD(ctype, type, path) FIELD_AT(ctype, type, path, 0)
#define SIZEOF(ctype, type) printf("sizeof\t%s\t%zu\n", ctype, sizeof(type))
#define INT(name, value) printf("int\t%s\t%lld\n", name, (long long)(value))
#define STR(name, value) printf("str\t%s\t%s\n", name, value)

#endif
