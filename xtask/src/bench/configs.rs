//! The config files of the proxies: the upstream nginx, nginx and HAProxy as proxies, and
//! sluice-proxy's plain config, which comparisons add their settings to.

use std::path::Path;

use super::processes::UPSTREAM;

/// The route every sluice-proxy config has (its counters are read from the admin listener).
pub(super) const ROUTE: &str = "all";

fn nginx_common(dir: &Path, name: &str, workers: usize) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nworker_processes {workers};\npid {d}/{name}.pid;\nerror_log {d}/{name}.error.log warn;\n\
         events {{ worker_connections 10000; }}\n"
    )
}

fn temp_paths(dir: &Path, name: &str) -> String {
    let d = dir.display();
    ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|t| format!("  {t}_temp_path {d}/{name}-{t}-temp;\n"))
        .collect()
}

/// The upstream nginx, on `UPSTREAM` and also on the ports of `also` (`--mirror`'s fast shadow).
/// `/upload` answers like `/small` once it has read the whole request body.
pub(super) fn upstream_conf(dir: &Path, workers: usize, also: &[u16]) -> String {
    let also: String = also.iter().map(|p| format!("listen 127.0.0.1:{p} backlog=4096;\n    ")).collect();
    format!(
        "{}http {{\n  access_log off;\n{}  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n  \
         server {{\n    listen 127.0.0.1:{UPSTREAM} backlog=4096;\n    {also}\
         location = /small {{ default_type text/plain; return 200 \"hello from the upstream\\n\"; }}\n    \
         location = /1m {{ root {}/www; }}\n    \
         location = /c/small {{ default_type text/plain; add_header Cache-Control \"public, max-age=3600\"; \
         return 200 \"hello from the upstream\\n\"; }}\n    \
         location = /c/1m {{ alias {d}/www/1m; add_header Cache-Control \"public, max-age=3600\"; }}\n    \
         location = /upload {{ proxy_pass http://127.0.0.1:{UPSTREAM}/small; }}\n  }}\n}}\n",
        nginx_common(dir, "upstream", workers),
        temp_paths(dir, "upstream"),
        dir.display(),
        d = dir.display(),
    )
}

/// nginx as a reverse proxy on `port` doing what sluice-proxy does to every request: pass the
/// client's Host, set X-Forwarded-For/-Proto/-Host, and give each request an id it sends upstream
/// and returns to the client. With `minimal`, none of that. `name` keeps its files apart.
pub(super) fn nginx_proxy_conf(dir: &Path, name: &str, port: u16, workers: usize, minimal: bool) -> String {
    let headers = if minimal {
        ""
    } else {
        "proxy_set_header Host $host;\n      \
         proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      \
         proxy_set_header X-Forwarded-Proto $scheme;\n      proxy_set_header X-Forwarded-Host $host;\n      \
         proxy_set_header X-Request-Id $request_id;\n      add_header X-Request-Id $request_id always;\n    "
    };
    format!(
        "{}http {{\n  access_log off;\n{}  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n  \
         upstream backend {{ server 127.0.0.1:{UPSTREAM}; keepalive 256; keepalive_requests 10000000; }}\n  \
         server {{\n    listen 127.0.0.1:{port} backlog=4096;\n    \
         location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      \
         proxy_set_header Connection \"\";\n      {headers}}}\n  }}\n}}\n",
        nginx_common(dir, name, workers),
        temp_paths(dir, name),
    )
}

/// HAProxy on `port` doing the same per-request work as nginx above.
pub(super) fn haproxy_conf(dir: &Path, name: &str, port: u16, workers: usize, minimal: bool) -> String {
    let headers = if minimal {
        ""
    } else {
        "  option forwardfor\n  unique-id-format %[uuid()]\n  unique-id-header X-Request-Id\n  \
         http-request set-header X-Forwarded-Proto http\n  \
         http-request set-header X-Forwarded-Host %[req.hdr(host)]\n  \
         http-response set-header X-Request-Id %[unique-id]\n"
    };
    format!(
        "global\n  nbthread {workers}\n  maxconn 4096\n  pidfile {}/{name}.pid\n\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  \
         option http-keep-alive\n  http-reuse always\n\n\
         frontend bench\n  bind 127.0.0.1:{port}\n{headers}  default_backend upstream\n\n\
         backend upstream\n  server u1 127.0.0.1:{UPSTREAM}\n",
        dir.display()
    )
}

/// sluice-proxy's plain config: one listener on `port`, one pool, one catch-all route.
pub(super) fn sluice_conf(port: u16) -> String {
    sluice_conf_with(port, "", "", "")
}

/// The plain config with `listener`, `pool` and `route` settings added.
pub(super) fn sluice_conf_with(port: u16, listener: &str, pool: &str, route: &str) -> String {
    format!(
        "listeners:\n  - name: bench\n    address: 127.0.0.1:{port}\n{listener}pools:\n  - name: upstream\n    endpoints:\n      - address: 127.0.0.1:{UPSTREAM}\n{pool}routes:\n  - name: {ROUTE}\n    pool: upstream\n{route}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_config_is_the_plain_one() {
        assert_eq!(
            sluice_conf(18003),
            "listeners:\n  - name: bench\n    address: 127.0.0.1:18003\npools:\n  - name: upstream\n    \
             endpoints:\n      - address: 127.0.0.1:18000\nroutes:\n  - name: all\n    pool: upstream\n"
        );
    }

    #[test]
    fn the_upstream_listens_on_more_ports_only_when_asked() {
        let dir = Path::new("/tmp/bench");
        assert!(upstream_conf(dir, 2, &[18009]).contains("listen 127.0.0.1:18009 backlog=4096;\n"));
        assert!(!upstream_conf(dir, 2, &[]).contains("18009"));
    }
}
