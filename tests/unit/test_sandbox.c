/* The sandbox: chroot path mapping and the seccomp filter's verdicts. */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "stubborn/sandbox.h"

#if defined(__SANITIZE_ADDRESS__)
#define STUBBORN_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define STUBBORN_TEST_ASAN 1
#endif
#endif

static void
path_under(void **state)
{
	(void)state;
	assert_true(sandbox_path_under("/var/lib/stubborn/q", "/var/lib"));
	assert_true(sandbox_path_under("/var/lib", "/var/lib/"));
	assert_true(sandbox_path_under("/etc/x", "/"));
	assert_false(sandbox_path_under("/var/library/x", "/var/lib"));
	assert_false(sandbox_path_under("/etc/stubborn.conf", "/var/lib"));
	/* Not chrooted: every path stays as it is. */
	assert_string_equal(sandbox_path("/var/lib/x"), "/var/lib/x");
	assert_null(sandbox_path(NULL));
}

/*
 * Run what in a child under the filter; returns the child's wait status.
 * The child exits 0 when what returned.
 */
static int
filtered(void (*what)(void))
{
	pid_t pid;
	int st;

	if ((pid = fork()) == 0) {
		if (sandbox_seccomp() != 0)
			_exit(2);
		what();
		_exit(0);
	}
	assert_true(pid > 0);
	assert_int_equal(waitpid(pid, &st, 0), pid);
	return st;
}

/* What the resolver does all day must pass. */
static void
allowed_calls(void)
{
	struct timespec ts;
	unsigned char buf[16];
	void *p;
	int fd, sv[2];

	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0 ||
	    getrandom(buf, sizeof(buf), 0) != (ssize_t)sizeof(buf))
		_exit(3);
	if ((fd = socket(AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK, 0)) == -1)
		_exit(4);
	close(fd);
	if (pipe(sv) != 0 ||
	    write(sv[1], "x", 1) != 1 || read(sv[0], buf, 1) != 1)
		_exit(5);
	if ((p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE,
	    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)) == MAP_FAILED)
		_exit(6);
	munmap(p, 1 << 20);
	free(malloc(1 << 22));
}

static void
exec_shell(void)
{
	execl("/bin/sh", "sh", "-c", "exit 0", (char *)NULL);
}

static void
make_executable(void)
{
	mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS,
	    -1, 0);
}

static void
netlink_socket(void)
{
	socket(AF_NETLINK, SOCK_RAW, 0);
}

#ifndef STUBBORN_TEST_ASAN
static void
trace_parent(void)
{
	ptrace(PTRACE_ATTACH, getppid(), NULL, NULL);
}
#endif

static void
change_identity(void)
{
	if (setuid(getuid()) != 0)
		_exit(7);
}

static void
verdicts(void **state)
{
	void (*forbidden[])(void) = { exec_shell, make_executable,
	    netlink_socket, change_identity,
#ifndef STUBBORN_TEST_ASAN
	    trace_parent,	/* LeakSanitizer needs ptrace */
#endif
	};
	size_t i;
	int st;

	(void)state;
	st = filtered(allowed_calls);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	for (i = 0; i < sizeof(forbidden) / sizeof(forbidden[0]); i++) {
		st = filtered(forbidden[i]);
		assert_true(WIFSIGNALED(st));
		assert_int_equal(WTERMSIG(st), SIGSYS);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(path_under),
#ifdef HAVE_SECCOMP
		cmocka_unit_test(verdicts),
#endif
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
