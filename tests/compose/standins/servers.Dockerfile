# Test only (make compose-smoke): Redis, Prometheus and Alertmanager where their images cannot be pulled: the real
# servers, from Debian's packages, which SERVERS_IMAGE (a debootstrap root filesystem) holds. One stage per server.
# Each data folder belongs to the user compose.yaml runs the server as, as in the official images: a fresh named
# volume takes the owner of the folder it is mounted on.
ARG SERVERS_IMAGE

FROM ${SERVERS_IMAGE} AS redis
RUN mkdir -p /data && chown 999:999 /data
WORKDIR /data
EXPOSE 6379

FROM ${SERVERS_IMAGE} AS prometheus
RUN mkdir -p /prometheus && chown 65534:65534 /prometheus
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]

FROM ${SERVERS_IMAGE} AS alertmanager
RUN mkdir -p /alertmanager && chown 65534:65534 /alertmanager
WORKDIR /alertmanager
EXPOSE 9093
ENTRYPOINT ["/usr/bin/prometheus-alertmanager"]
