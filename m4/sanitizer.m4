# STUBBORN_SANITIZER: --with-sanitizer[=address,undefined] adds -fsanitize
# flags to every compile and link (the test suite then runs under them).
AC_DEFUN([STUBBORN_SANITIZER], [
AC_ARG_WITH([sanitizer],
    [AS_HELP_STRING([--with-sanitizer@<:@=LIST@:>@],
        [build with -fsanitize=LIST (default address,undefined)])],
    [], [with_sanitizer=no])
SANITIZER_CFLAGS=
AS_IF([test "x$with_sanitizer" != xno], [
    AS_IF([test "x$with_sanitizer" = xyes], [with_sanitizer=address,undefined])
    SANITIZER_CFLAGS="-fsanitize=$with_sanitizer -fno-omit-frame-pointer -fno-sanitize-recover=all"
    save_CFLAGS=$CFLAGS
    CFLAGS="$CFLAGS $SANITIZER_CFLAGS"
    save_LDFLAGS=$LDFLAGS
    LDFLAGS="$LDFLAGS $SANITIZER_CFLAGS"
    AC_MSG_CHECKING([whether $CC accepts $SANITIZER_CFLAGS])
    AC_LINK_IFELSE([AC_LANG_PROGRAM([], [])], [AC_MSG_RESULT([yes])],
        [AC_MSG_RESULT([no])
         AC_MSG_ERROR([$CC cannot build with -fsanitize=$with_sanitizer])])
    CFLAGS=$save_CFLAGS
    LDFLAGS=$save_LDFLAGS
])
AC_SUBST([SANITIZER_CFLAGS])
])

# STUBBORN_FUZZER: --with-fuzzer builds tests/fuzz as libFuzzer binaries
# (clang; with ASan and UBSan).  Without it the same targets link a replay
# main that `make check` runs over their seed corpora.
AC_DEFUN([STUBBORN_FUZZER], [
AC_ARG_WITH([fuzzer],
    [AS_HELP_STRING([--with-fuzzer], [build libFuzzer targets (needs clang)])],
    [], [with_fuzzer=no])
FUZZER_CFLAGS=
FUZZER_LDFLAGS=
AS_IF([test "x$with_fuzzer" != xno], [
    FUZZER_CFLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer"
    FUZZER_LDFLAGS="-fsanitize=fuzzer,address,undefined"
    save_CFLAGS=$CFLAGS
    CFLAGS="$CFLAGS $FUZZER_CFLAGS"
    AC_MSG_CHECKING([whether $CC builds libFuzzer targets])
    AC_COMPILE_IFELSE([AC_LANG_PROGRAM([], [])], [AC_MSG_RESULT([yes])],
        [AC_MSG_RESULT([no])
         AC_MSG_ERROR([--with-fuzzer needs clang with libFuzzer (CC=clang)])])
    CFLAGS=$save_CFLAGS
])
AC_SUBST([FUZZER_CFLAGS])
AC_SUBST([FUZZER_LDFLAGS])
AM_CONDITIONAL([FUZZER], [test "x$with_fuzzer" != xno])
])
