#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <linux/capability.h>

#ifdef HAVE_SECCOMP
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <seccomp.h>
#endif

#include "stubborn/config.h"
#include "stubborn/log.h"
#include "stubborn/sandbox.h"

static int	drop(const char *, const char *, const char *);

int
sandbox_drop_privileges(const char *user, const char *dir)
{
	return drop(user, dir, "running");
}

bool
sandbox_lookup_failed(int e)
{
	/* getpwnam(3): these, like 0, may only mean "no such name". */
	return e != 0 && e != ENOENT && e != ESRCH && e != EBADF && e != EPERM;
}

/* who: what the log line says is now running as user. */
static int
drop(const char *user, const char *dir, const char *who)
{
	struct passwd *pw = NULL;

	/* Looked up first: the chroot need not hold a passwd file. */
	errno = 0;
	if (user != NULL && (pw = getpwnam(user)) == NULL) {
		if (sandbox_lookup_failed(errno))
			log_err("user %s", user);
		else
			log_errx("no such user: %s", user);
		return -1;
	}
	if (dir != NULL && sandbox_chroot(dir) != 0)
		return -1;
	if (pw == NULL)
		return 0;
	if (geteuid() != 0) {
		if (geteuid() == pw->pw_uid)
			return 0;
		log_errx("cannot switch to user %s: not running as root",
		    user);
		return -1;
	}
	if (setgroups(1, &pw->pw_gid) == -1 ||
	    setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) == -1 ||
	    setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) == -1) {
		log_err("dropping privileges to %s", user);
		return -1;
	}
	/* The drop must be permanent: regaining root has to fail. */
	if (pw->pw_uid != 0 && (setuid(0) != -1 || seteuid(0) != -1)) {
		log_errx("privileges could be regained after the drop");
		return -1;
	}
	log_info("%s as %s (uid %u)", who, user, (unsigned)pw->pw_uid);
	return 0;
}

/*
 * The launcher.  The daemon and it share one SOCK_SEQPACKET pair, so each
 * message arrives whole: 'H' json (an incident: run the hook), 'L' (run
 * update-log-list); the launcher answers 'L' with the wait status (int)
 * of that program.  No message names what to run: a daemon taken over
 * must not get a command run outside its sandbox.  The hook is the conf
 * file's on-incident line, the program this binary with the conf file.
 */
#define LAUNCH_MSG_MAX	65536
#define LAUNCH_TIMEOUT_SEC	600	/* a hung update-log-list is killed */

static struct {
	int		 fd;		/* the daemon's end; -1: none */
	bool		 restricted;	/* seccomp on: this process cannot fork */
	pid_t		 pid;
	struct event	*ev;
	void		(*done)(int, void *);
	void		*arg;
	bool		 busy;
	/* In the launcher: */
	char		*conf;		/* the conf file, as given */
	char		*hook;		/* its last on-incident line that loaded */
} launcher = { .fd = -1 };

static void
launcher_hook(const char *cmd, const char *json)
{
	size_t jlen = strlen(json);
	char *msg;

	(void)cmd;	/* the launcher reads it from the conf file */
	if (1 + jlen > LAUNCH_MSG_MAX) {
		log_warnx("on-incident: the record is too large to pass on");
		return;
	}
	if ((msg = malloc(1 + jlen)) == NULL) {
		log_warn("on-incident");
		return;
	}
	msg[0] = 'H';
	memcpy(msg + 1, json, jlen);
	if (send(launcher.fd, msg, 1 + jlen, MSG_DONTWAIT) == -1)
		log_warn("on-incident: passing the record to the launcher");
	free(msg);
}

/*
 * In the launcher: the conf file's on-incident command now, read again
 * so a reload's applies; the last one that loaded when it does not.
 */
static const char *
launcher_hook_cmd(void)
{
	FILE *quiet = fopen("/dev/null", "w");
	struct config *cfg;

	if (quiet == NULL)
		return launcher.hook;
	cfg = config_load(launcher.conf, false, quiet);
	fclose(quiet);
	if (cfg != NULL) {
		free(launcher.hook);
		launcher.hook = cfg->on_incident ? strdup(cfg->on_incident) :
		    NULL;
		config_free(cfg);
	}
	return launcher.hook;
}

/* In the launcher: start argv, stdin from /dev/null. */
static pid_t
launcher_spawn(char *const argv[])
{
	pid_t pid = fork();

	if (pid == 0) {
		int fd = open("/dev/null", O_RDONLY);

		if (fd != -1)
			dup2(fd, STDIN_FILENO);
		execv("/proc/self/exe", argv);
		_exit(127);
	}
	return pid;
}

/* The launcher's life: serve the daemon until it closes its end. */
static void __attribute__((noreturn))
launcher_main(int fd)
{
	static char msg[LAUNCH_MSG_MAX + 1];
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	time_t started = 0;
	pid_t child = 0;
	ssize_t n;

	for (;;) {
		int st;
		pid_t pid;

		if (child > 0 && time(NULL) - started > LAUNCH_TIMEOUT_SEC)
			kill(child, SIGKILL);	/* reaped, and reported, below */
		while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
			if (pid == child) {
				char reply[1 + sizeof(int)] = { 'L' };

				memcpy(reply + 1, &st, sizeof(st));
				send(fd, reply, sizeof(reply), 0);
				child = 0;
			}
		if (poll(&pfd, 1, 200) <= 0)
			continue;
		if ((n = recv(fd, msg, LAUNCH_MSG_MAX, 0)) == 0)
			_exit(0);	/* the daemon is gone */
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			_exit(1);
		}
		msg[n] = '\0';
		if (msg[0] == 'H') {
			const char *cmd = launcher_hook_cmd();

			if (cmd != NULL && *cmd != '\0')
				log_run_hook(cmd, msg + 1);
		} else if (msg[0] == 'L' && child == 0) {
			char *argv[] = { (char *)"stubborn",
			    (char *)"update-log-list", (char *)"-c",
			    launcher.conf, NULL };

			started = time(NULL);
			if ((child = launcher_spawn(argv)) == -1) {
				char reply[1 + sizeof(int)] = { 'L' };

				st = -1;
				memcpy(reply + 1, &st, sizeof(st));
				send(fd, reply, sizeof(reply), 0);
				child = 0;
			}
		}
	}
}

/* The launcher is gone: under seccomp this process cannot start a hook. */
static void
launcher_gone_hook(const char *cmd, const char *json)
{
	(void)json;
	log_warnx("on-incident: not run (the launcher is gone): %s", cmd);
}

static void
launcher_read(evutil_socket_t fd, short ev, void *arg)
{
	char reply[1 + sizeof(int)];
	void (*done)(int, void *);
	ssize_t n;
	int st;

	(void)ev;
	(void)arg;
	if ((n = recv(fd, reply, sizeof(reply), MSG_DONTWAIT)) <= 0) {
		if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
			log_warnx("the launcher exited; incident hooks and "
			    "the CT log list refresh no longer run");
			event_del(launcher.ev);
			log_set_hook_runner(launcher.restricted ?
			    launcher_gone_hook : NULL);
			close(launcher.fd);
			launcher.fd = -1;
		}
		return;
	}
	if (n != sizeof(reply) || reply[0] != 'L' || !launcher.busy)
		return;
	memcpy(&st, reply + 1, sizeof(st));
	done = launcher.done;
	launcher.busy = false;
	done(st, launcher.arg);
}

int
sandbox_launcher_start(struct event_base *base, const char *user,
    const char *conf, const char *hook)
{
	pid_t parent = getpid();
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == -1) {
		log_err("launcher: socketpair");
		return -1;
	}
	if ((launcher.pid = fork()) == -1) {
		log_err("launcher: fork");
		close(sv[0]);
		close(sv[1]);
		return -1;
	}
	if (launcher.pid == 0) {
		/*
		 * Nothing of the daemon's: no sockets, no files (syslog's
		 * included, reopened on use), and its own socket closed on
		 * exec, so no hook or child inherits it.
		 */
		closelog();
		if (dup3(sv[1], 3, O_CLOEXEC) == -1 ||
		    syscall(SYS_close_range, 4U, ~0U, 0) == -1)
			_exit(1);
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		prctl(PR_SET_NAME, "stubborn-launch");
		signal(SIGHUP, SIG_IGN);
		signal(SIGINT, SIG_IGN);
		signal(SIGTERM, SIG_DFL);
		signal(SIGCHLD, SIG_DFL);
		if (getppid() != parent)
			_exit(0);	/* the daemon died already */
		/*
		 * Back where stubborn started (the daemon may have moved to
		 * /): what it runs reads the conf's relative paths from there.
		 */
		if (*config_base_dir() != '\0' &&
		    chdir(config_base_dir()) == -1)
			_exit(1);
		if (drop(user, NULL, "launcher running") != 0)
			_exit(1);
		launcher.conf = strdup(conf);
		launcher.hook = hook ? strdup(hook) : NULL;
		if (launcher.conf == NULL)
			_exit(1);
		launcher_main(3);
	}
	close(sv[1]);
	launcher.fd = sv[0];
	launcher.ev = event_new(base, launcher.fd, EV_READ | EV_PERSIST,
	    launcher_read, NULL);
	if (launcher.ev == NULL || event_add(launcher.ev, NULL) != 0) {
		log_errx("launcher: cannot watch its socket");
		sandbox_launcher_stop();
		return -1;
	}
	log_set_hook_runner(launcher_hook);
	return 0;
}

int
sandbox_launch_refresh(void (*done)(int, void *), void *arg)
{
	const char msg[] = { 'L' };

	if (launcher.fd == -1 || launcher.busy)
		return -1;
	if (send(launcher.fd, msg, sizeof(msg), MSG_DONTWAIT) == -1) {
		log_warn("launcher");
		return -1;
	}
	launcher.busy = true;
	launcher.done = done;
	launcher.arg = arg;
	return 0;
}

void
sandbox_launcher_stop(void)
{
	int st;

	if (launcher.ev != NULL)
		event_free(launcher.ev);
	launcher.ev = NULL;
	log_set_hook_runner(NULL);
	if (launcher.fd != -1)
		close(launcher.fd);
	launcher.fd = -1;
	if (launcher.pid > 0)
		while (waitpid(launcher.pid, &st, 0) == -1 && errno == EINTR)
			;
	launcher.pid = 0;
}

static char *chroot_dir;

bool
sandbox_path_under(const char *path, const char *dir)
{
	size_t n = strlen(dir);

	while (n > 1 && dir[n - 1] == '/')
		n--;
	return strncmp(path, dir, n) == 0 &&
	    (path[n] == '/' || path[n] == '\0' || n == 1);
}

FILE *
sandbox_fopen_regular(const char *path, const char **why)
{
	struct stat st;
	FILE *fp;
	int fd, saved;

	if ((fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)) == -1 ||
	    fstat(fd, &st) == -1) {
		*why = strerror(errno);
		goto fail;
	}
	if (S_ISDIR(st.st_mode)) {
		errno = EISDIR;
		*why = strerror(errno);
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		errno = EINVAL;
		*why = "not a regular file";
		goto fail;
	}
	if ((fp = fdopen(fd, "r")) == NULL) {
		*why = strerror(errno);
		goto fail;
	}
	return fp;
fail:
	saved = errno;
	if (fd != -1)
		close(fd);
	errno = saved;
	return NULL;
}

const char *
sandbox_path(const char *path)
{
	size_t n;

	if (chroot_dir == NULL || path == NULL ||
	    !sandbox_path_under(path, chroot_dir))
		return path;
	n = strlen(chroot_dir);
	return path[n] == '\0' ? "/" : path + n;
}

int
sandbox_chroot(const char *dir)
{
	char *d;

	if ((d = realpath(dir, NULL)) == NULL) {
		log_err("chroot %s", dir);
		return -1;
	}
	if (chroot(d) == -1 || chdir("/") == -1) {
		log_err("chroot %s", d);
		free(d);
		return -1;
	}
	while (strlen(d) > 1 && d[strlen(d) - 1] == '/')
		d[strlen(d) - 1] = '\0';
	free(chroot_dir);
	chroot_dir = strcmp(d, "/") == 0 ? NULL : d;
	if (chroot_dir == NULL)
		free(d);
	log_info("chroot %s", dir);
	return 0;
}

int
sandbox_drop_capabilities(void)
{
	struct __user_cap_header_struct hdr = {
		.version = _LINUX_CAPABILITY_VERSION_3,
	};
	struct __user_cap_data_struct data[2];

	memset(data, 0, sizeof(data));
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) == -1 &&
	    errno != EINVAL) {
		log_err("clearing ambient capabilities");
		return -1;
	}
	if (syscall(SYS_capset, &hdr, data) == -1) {
		log_err("dropping capabilities");
		return -1;
	}
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1) {
		log_err("PR_SET_NO_NEW_PRIVS");
		return -1;
	}
	return 0;
}

#ifdef HAVE_SECCOMP
/*
 * What the event loop, OpenSSL, nghttp2, libc's allocator, syslog and a
 * reload (conf, CA files, the quarantine file) need; nothing that starts
 * a process, traces one, loads code or changes identity.
 */
static const int seccomp_allowed[] = {
	SCMP_SYS(read), SCMP_SYS(readv), SCMP_SYS(pread64),
	SCMP_SYS(write), SCMP_SYS(writev), SCMP_SYS(pwrite64),
	SCMP_SYS(close), SCMP_SYS(openat), SCMP_SYS(lseek),
	SCMP_SYS(fstat), SCMP_SYS(newfstatat), SCMP_SYS(statx),
	SCMP_SYS(access), SCMP_SYS(faccessat), SCMP_SYS(faccessat2),
	SCMP_SYS(getdents64), SCMP_SYS(fcntl),
	SCMP_SYS(fsync), SCMP_SYS(fdatasync), SCMP_SYS(rename),
	SCMP_SYS(renameat), SCMP_SYS(renameat2), SCMP_SYS(unlink),
	SCMP_SYS(unlinkat), SCMP_SYS(fchmod), SCMP_SYS(umask),
	SCMP_SYS(readlink), SCMP_SYS(readlinkat), SCMP_SYS(stat),
	SCMP_SYS(lstat),
#ifdef __NR_open
	SCMP_SYS(open),
#endif
	SCMP_SYS(connect), SCMP_SYS(accept), SCMP_SYS(accept4),
	SCMP_SYS(shutdown), SCMP_SYS(getsockname), SCMP_SYS(getpeername),
	SCMP_SYS(getsockopt), SCMP_SYS(setsockopt),
	SCMP_SYS(recvfrom), SCMP_SYS(sendto), SCMP_SYS(recvmsg),
	SCMP_SYS(sendmsg), SCMP_SYS(recvmmsg), SCMP_SYS(sendmmsg),
	SCMP_SYS(pipe2),
	SCMP_SYS(epoll_create1), SCMP_SYS(epoll_ctl), SCMP_SYS(epoll_wait),
	SCMP_SYS(epoll_pwait), SCMP_SYS(poll), SCMP_SYS(ppoll),
	SCMP_SYS(select), SCMP_SYS(pselect6), SCMP_SYS(eventfd2),
	SCMP_SYS(timerfd_create), SCMP_SYS(timerfd_settime),
	SCMP_SYS(clock_gettime), SCMP_SYS(clock_getres),
	SCMP_SYS(gettimeofday), SCMP_SYS(time), SCMP_SYS(nanosleep),
	SCMP_SYS(clock_nanosleep),
	SCMP_SYS(brk), SCMP_SYS(munmap), SCMP_SYS(mremap), SCMP_SYS(madvise),
	SCMP_SYS(futex), SCMP_SYS(getrandom), SCMP_SYS(sched_yield),
	SCMP_SYS(rt_sigaction), SCMP_SYS(rt_sigprocmask),
	SCMP_SYS(rt_sigreturn), SCMP_SYS(sigaltstack),
	SCMP_SYS(restart_syscall), SCMP_SYS(getpid), SCMP_SYS(gettid),
	SCMP_SYS(getuid), SCMP_SYS(geteuid), SCMP_SYS(getgid),
	SCMP_SYS(getegid), SCMP_SYS(uname), SCMP_SYS(sysinfo),
	SCMP_SYS(getrlimit), SCMP_SYS(prlimit64), SCMP_SYS(getrusage),
	SCMP_SYS(wait4), SCMP_SYS(exit), SCMP_SYS(exit_group),
};

#if defined(__SANITIZE_ADDRESS__)
#define STUBBORN_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define STUBBORN_ASAN 1
#endif
#endif

#ifdef STUBBORN_ASAN
/* LeakSanitizer stops the world at exit from a traced helper thread. */
static const int seccomp_allowed_asan[] = {
	SCMP_SYS(clone), SCMP_SYS(clone3), SCMP_SYS(ptrace),
	SCMP_SYS(prctl), SCMP_SYS(getppid), SCMP_SYS(tgkill), SCMP_SYS(kill),
	SCMP_SYS(process_vm_readv), SCMP_SYS(set_robust_list),
	SCMP_SYS(rseq), SCMP_SYS(sched_getaffinity), SCMP_SYS(getdents),
};
#endif

int
sandbox_seccomp(void)
{
	scmp_filter_ctx ctx;
	size_t i;
	int e = 0;

	if ((ctx = seccomp_init(SCMP_ACT_KILL_PROCESS)) == NULL) {
		log_errx("seccomp_init failed");
		return -1;
	}
	for (i = 0; e == 0 && i < sizeof(seccomp_allowed) /
	    sizeof(seccomp_allowed[0]); i++)
		e = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, seccomp_allowed[i],
		    0);
	/* Sockets of the families in use: IP, and syslog's. */
	for (i = 0; e == 0 && i < 3; i++)
		e = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), 1,
		    SCMP_CMP(0, SCMP_CMP_EQ, (int[]){ AF_INET, AF_INET6,
		    AF_UNIX }[i], 0));
	/* libevent asks how much there is to read; nothing else. */
	for (i = 0; e == 0 && i < 2; i++)
		e = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
		    SCMP_CMP(1, SCMP_CMP_EQ, (unsigned long[]){ FIONREAD,
		    FIONBIO }[i], 0));
	/* Memory, but never executable memory. */
	if (e == 0)
		e = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mmap), 1,
		    SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
	if (e == 0)
		e = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mprotect),
		    1, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
#ifdef STUBBORN_ASAN
	for (i = 0; e == 0 && i < sizeof(seccomp_allowed_asan) /
	    sizeof(seccomp_allowed_asan[0]); i++)
		e = seccomp_rule_add(ctx, SCMP_ACT_ALLOW,
		    seccomp_allowed_asan[i], 0);
#endif
	if (e == 0)
		e = seccomp_load(ctx);
	seccomp_release(ctx);
	if (e != 0) {
		log_errx("seccomp: %s", strerror(-e));
		return -1;
	}
	launcher.restricted = true;
	if (launcher.fd == -1)
		log_set_hook_runner(launcher_gone_hook);
	log_info("seccomp filter on");
	return 0;
}
#else
int
sandbox_seccomp(void)
{
	return 1;
}
#endif
