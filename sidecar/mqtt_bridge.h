/*
 * mqtt_bridge.h — forwards the governed view of event ports to MQTT
 * brokers with libmosquitto: for every DataProduct of the snapshot in force
 * whose event port has an `mqtt` setting (broker, topic, audience, qos,
 * credentials), one bridge reads the port's log, masks and filters each event
 * as the audience principal's decision says, and publishes it to the topic; it
 * connects with TLS to mqtts:// brokers, logs in with the credentials file the
 * setting names (read at every connect, so a rotated secret applies at the next
 * reconnect), reconnects with backoff and resends what the broker did not
 * acknowledge.  docs/internals/mqtt_bridge.md.
 */
#ifndef POLIS_SC_MQTT_BRIDGE_H
#define POLIS_SC_MQTT_BRIDGE_H

#include "common/error.h"
#include "sidecar/event_port.h"
#include "sidecar/ports.h"
#include "sidecar/snapshot.h"

typedef struct sc_bridges sc_bridges;

typedef struct sc_bridges_options {
    const char *domain;     /* the sidecar's domain */
    const char *id;         /* the sidecar's id: MQTT client ids derive
                               from it */
    const char *state_dir;  /* acknowledged offsets are kept under
                               <state_dir>/bridges/ */
    sc_snapshot_slot *slot; /* the snapshot in force */
    sc_ports *ports;        /* the product catalogue */
    sc_events *events;      /* the event ports' logs */
    int reconnect_max_ms;   /* backoff cap; 0: 10000 */
    /* mqtts:// brokers: the CA bundle that verifies them (NULL or "":
     * OpenSSL's default, $SSL_CERT_FILE or the bundle it was built with),
     * and an optional client certificate and key
     * for mutual TLS (both or neither; NULL or "": none). */
    const char *ca_file;
    const char *cert_file;
    const char *key_file;
    /* Where a setting's `credentials: NAME` is looked up: the file
     * <credentials_dir>/NAME holds "username:password" (NULL or "": no
     * bridge with credentials can connect). */
    const char *credentials_dir;
} sc_bridges_options;

/*
 * Start the bridge set: it follows the snapshot in force, starting,
 * restarting (changed settings) and stopping one bridge per bridged event
 * port.  Everything in `o` is borrowed and must outlive the set.  Fails
 * with POLIS_EINVAL (where: the file) when a CA file, certificate or key
 * given is unreadable, when only one of cert_file and key_file is given,
 * or when credentials_dir is not a directory; a missing default CA bundle
 * is only an error for the mqtts:// bridges, when they connect.  Caller
 * stops and frees with sc_bridges_free.
 */
int sc_bridges_start(const sc_bridges_options *o, sc_bridges **out,
                     polis_error *err);

/* Stop every bridge (a last flush of what is in flight, bounded), free.
 * NULL is a no-op. */
void sc_bridges_free(sc_bridges *b);

#endif
