/*
 * mqttsub.h — a real MQTT subscriber for tests (libmosquitto, its own
 * network thread): one topic at QoS 1 on a persistent session, plain or
 * TLS with a login; it keeps every message, parsed as JSON, in the order
 * they arrive.
 */
#ifndef POLIS_MQTTSUB_H
#define POLIS_MQTTSUB_H

#include <jansson.h>
#include <stddef.h>

typedef struct mqttsub mqttsub;

typedef struct mqttsub_options {
    const char *client_id; /* its persistent session (clean_session off) */
    int port;              /* of the broker on 127.0.0.1 */
    const char *topic;
    const char *ca_file; /* TLS, verified against it; NULL: plain */
    const char *user;    /* a login; NULL: none */
    const char *password;
} mqttsub_options;

/*
 * Connect and subscribe, and wait up to timeout_ms for the SUBACK.  NULL,
 * with the reason on stderr, when that fails.  Reconnects (and subscribes
 * again) by itself after the broker went away.  Stop with mqttsub_stop.
 */
mqttsub *mqttsub_start(const mqttsub_options *o, int timeout_ms);

/* 0 once the subscription is held (again), -1 after timeout_ms. */
int mqttsub_wait_subscribed(mqttsub *s, int timeout_ms);

/*
 * What arrived so far, in order of arrival, duplicates included: a new
 * array of the parsed messages (caller decrefs).  *bad (may be NULL) gets
 * how many were not JSON, or came beyond 10,000 messages.
 */
json_t *mqttsub_messages(mqttsub *s, size_t *bad);

/* Disconnect, stop the thread, free what arrived.  NULL is a no-op. */
void mqttsub_stop(mqttsub *s);

#endif
