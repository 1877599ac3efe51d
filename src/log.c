#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include <openssl/err.h>

#include "stubborn/log.h"

static int log_foreground = 1;
static const char *incident_hook;
static void (*hook_runner)(const char *, const char *) = log_run_hook;
static int log_level = LOG_INFO;

static const char *const log_level_str[] = {
	[LOG_EMERG] = "emerg", [LOG_ALERT] = "alert", [LOG_CRIT] = "crit",
	[LOG_ERR] = "error", [LOG_WARNING] = "warning",
	[LOG_NOTICE] = "notice", [LOG_INFO] = "info", [LOG_DEBUG] = "debug",
};

void
log_init(int foreground, int level)
{
	log_foreground = foreground;
	log_level = level;
	if (foreground != LOG_TO_STDERR)
		openlog("stubborn", LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

void
log_setlevel(int level)
{
	log_level = level;
}

int
log_getlevel(void)
{
	return log_level;
}

static void log_vwrite(int, const char *, va_list, const char *)
    __attribute__((format(printf, 2, 0)));

static void
log_vwrite(int pri, const char *fmt, va_list ap, const char *suffix)
{
	char msg[2048];

	if (pri > log_level)
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (log_foreground != LOG_TO_SYSLOG) {
		/* One fprintf per line, so lines from a crash don't interleave. */
		fprintf(stderr, "%s: %s%s%s\n", log_level_str[pri], msg,
		    suffix ? ": " : "", suffix ? suffix : "");
		fflush(stderr);
	}
	if (log_foreground != LOG_TO_STDERR)
		syslog(pri, "%s%s%s", msg, suffix ? ": " : "",
		    suffix ? suffix : "");
}

void
log_err(const char *fmt, ...)
{
	va_list ap;
	int saved = errno;

	va_start(ap, fmt);
	log_vwrite(LOG_ERR, fmt, ap, strerror(saved));
	va_end(ap);
	errno = saved;
}

void
log_errx(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vwrite(LOG_ERR, fmt, ap, NULL);
	va_end(ap);
}

void
log_warn(const char *fmt, ...)
{
	va_list ap;
	int saved = errno;

	va_start(ap, fmt);
	log_vwrite(LOG_WARNING, fmt, ap, strerror(saved));
	va_end(ap);
	errno = saved;
}

void
log_warnx(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vwrite(LOG_WARNING, fmt, ap, NULL);
	va_end(ap);
}

void
log_info(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vwrite(LOG_INFO, fmt, ap, NULL);
	va_end(ap);
}

void
log_debug(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vwrite(LOG_DEBUG, fmt, ap, NULL);
	va_end(ap);
}

void
fatal(const char *fmt, ...)
{
	va_list ap;
	int saved = errno;

	va_start(ap, fmt);
	log_vwrite(LOG_CRIT, fmt, ap, strerror(saved));
	va_end(ap);
	exit(1);
}

void
fatalx(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vwrite(LOG_CRIT, fmt, ap, NULL);
	va_end(ap);
	exit(1);
}

static void
log_crypto_at(int pri, const char *what)
{
	char buf[256], all[1024] = "";
	const char *data;
	unsigned long e;
	size_t used = 0;
	int flags;

	while ((e = ERR_get_error_all(NULL, NULL, NULL, &data,
	    &flags)) != 0) {
		ERR_error_string_n(e, buf, sizeof(buf));
		if (used < sizeof(all) - 1) {
			/* The detail (a file name, what was not regular). */
			int n = snprintf(all + used, sizeof(all) - used,
			    "%s%s%s%s", used ? "; " : "", buf,
			    (flags & ERR_TXT_STRING) && *data ? " " : "",
			    (flags & ERR_TXT_STRING) ? data : "");
			if (n > 0)
				used += (size_t)n;
		}
	}
	if (pri == LOG_ERR)
		log_errx("%s%s%s", what, used ? ": " : "", all);
	else
		log_warnx("%s%s%s", what, used ? ": " : "", all);
}

void
log_crypto(const char *what)
{
	log_crypto_at(LOG_WARNING, what);
}

void
log_crypto_err(const char *what)
{
	log_crypto_at(LOG_ERR, what);
}

void
log_set_incident_hook(const char *cmd)
{
	incident_hook = cmd;
}

void
log_set_hook_runner(void (*fn)(const char *, const char *))
{
	hook_runner = fn != NULL ? fn : log_run_hook;
}

/*
 * Double fork: the middle child exits at once and is reaped here; the
 * grandchild, reparented to init, leads a new process group, starts the
 * hook in it and kills the whole group (a shell's children too) if the
 * hook outlives its timeout.  The JSON goes through a pipe that holds it
 * whole.  After fork only async-signal-safe calls are made.
 */
void
log_run_hook(const char *cmd, const char *json)
{
	size_t len = strlen(json);
	int p[2], st;
	pid_t pid;

	if (pipe2(p, O_CLOEXEC) == -1) {
		log_warn("on-incident");
		return;
	}
	fcntl(p[1], F_SETFL, O_NONBLOCK);
	if (write(p[1], json, len) != (ssize_t)len ||
	    write(p[1], "\n", 1) != 1)
		log_warnx("on-incident: the record did not fit the pipe");
	close(p[1]);
	if ((pid = fork()) == -1) {
		log_warn("on-incident: fork");
		close(p[0]);
		return;
	}
	if (pid == 0) {
		struct timespec tick = { 0, 100 * 1000 * 1000 };
		pid_t hook;
		int i;

		if (fork() != 0)
			_exit(0);
		setsid();
		if ((hook = fork()) == 0) {
			if (dup2(p[0], STDIN_FILENO) == -1)
				_exit(127);
			execl("/bin/sh", "sh", "-c", cmd,
			    (char *)NULL);
			_exit(127);
		}
		for (i = 0; hook > 0 && i < LOG_HOOK_TIMEOUT_SEC * 10; i++) {
			if (waitpid(hook, &st, WNOHANG) == hook)
				_exit(0);
			nanosleep(&tick, NULL);
		}
		kill(0, SIGKILL);	/* the group: the hook and its children */
		_exit(1);
	}
	close(p[0]);
	while (waitpid(pid, &st, 0) == -1 && errno == EINTR)
		;
}

void
log_incident(const char *json)
{
	if (log_foreground != LOG_TO_SYSLOG) {
		fprintf(stderr, "%s\n", json);
		fflush(stderr);
	}
	if (log_foreground != LOG_TO_STDERR)
		syslog(LOG_ALERT, "%s", json);
	if (incident_hook != NULL)
		hook_runner(incident_hook, json);
}
