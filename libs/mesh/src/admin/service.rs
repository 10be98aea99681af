//! The `MeshAdminService` methods.

use super::MeshAdmin;
use super::convert::{client_counters, count, endpoint_status, upstream_policy};
use super::descriptors::is_method_path;
use super::paging::{decode_token, encode_token, endpoint_key, page_size};
use shop_proto::shop::mesh::v1 as pb;
use std::sync::atomic::Ordering;
use tonic::{Request, Response, Status};

#[tonic::async_trait]
impl pb::mesh_admin_service_server::MeshAdminService for MeshAdmin {
    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        let request = request.into_inner();
        let method = match request.method.as_str() {
            "" => None,
            m if is_method_path(m) => Some(m),
            m => {
                return Err(Status::invalid_argument(format!(
                    "method {m:?} is not a gRPC method path like /shop.catalog.v1.CatalogService/GetProduct"
                )));
            }
        };
        let names: Vec<String> = if request.upstream.is_empty() {
            self.upstreams
                .read()
                .expect("not poisoned")
                .keys()
                .cloned()
                .collect()
        } else {
            vec![request.upstream.clone()]
        };
        let mut upstreams = Vec::with_capacity(names.len());
        for name in names {
            let policy = self
                .upstream_policy(&name)
                .ok_or_else(|| Status::not_found(format!("no upstream named {name:?}")))?;
            let mut upstream = upstream_policy(&name, &policy);
            upstream.pending_restart = self.pending_restart(&name);
            upstream.identity = self
                .identities
                .read()
                .expect("not poisoned")
                .upstreams
                .get(&name)
                .cloned()
                .unwrap_or_default();
            if let Some(method) = method {
                upstream.methods.retain(|m| m.method == method);
                if upstream.methods.is_empty() && !request.upstream.is_empty() {
                    return Err(Status::not_found(format!(
                        "upstream {name:?} has no method {method:?}"
                    )));
                }
            }
            upstreams.push(upstream);
        }
        let version = self.version.lock().expect("not poisoned").clone();
        Ok(Response::new(pb::GetPolicyResponse {
            generation: version.generation,
            load_time: Some(version.load_time.into()),
            source: version.source,
            server: Some(self.server_policy()),
            upstreams,
        }))
    }

    async fn list_upstreams(
        &self,
        request: Request<pb::ListUpstreamsRequest>,
    ) -> Result<Response<pb::ListUpstreamsResponse>, Status> {
        let request = request.into_inner();
        let size = page_size(request.page_size)?;
        let after = decode_token(&request.page_token)?;
        let names: Vec<String> = self
            .upstream_names()
            .into_iter()
            .filter(|n| after.as_ref().is_none_or(|a| n > a))
            .collect();
        let more = names.len() > size;
        let upstreams: Vec<pb::UpstreamStatus> = names
            .iter()
            .take(size)
            .map(|name| self.upstream_status(name))
            .collect();
        let next_page_token = match upstreams.last() {
            Some(last) if more => encode_token(&last.upstream),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListUpstreamsResponse {
            upstreams,
            next_page_token,
        }))
    }

    async fn list_endpoints(
        &self,
        request: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        let request = request.into_inner();
        let size = page_size(request.page_size)?;
        let after = decode_token(&request.page_token)?;
        let names = self.upstream_names();
        let names: Vec<&String> = if request.upstream.is_empty() {
            names.iter().collect()
        } else if let Some(name) = names.get(&request.upstream) {
            vec![name]
        } else {
            return Err(Status::not_found(format!(
                "no upstream named {:?}",
                request.upstream
            )));
        };

        let mut endpoints = Vec::new();
        let mut more = false;
        'upstreams: for name in names {
            let policy = self.upstream_policy(name);
            for endpoint in self.stats.upstream(name).endpoints() {
                let key = endpoint_key(name, &endpoint.address);
                if after.as_ref().is_some_and(|a| &key <= a) {
                    continue;
                }
                if endpoints.len() == size {
                    more = true;
                    break 'upstreams;
                }
                endpoints.push(endpoint_status(name, policy.as_deref(), &endpoint));
            }
        }
        let next_page_token = match endpoints.last() {
            Some(last) if more => encode_token(&endpoint_key(&last.upstream, &last.address)),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListEndpointsResponse {
            endpoints,
            next_page_token,
        }))
    }

    async fn get_stats(
        &self,
        _request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let s = &self.stats.server;
        let server = pb::ServerCounters {
            requests: count(&s.requests),
            in_flight: s.in_flight.load(Ordering::Relaxed),
            shed: count(&s.shed),
            rate_limited: count(&s.rate_limited),
            concurrency_limit: count(&s.concurrency_limit),
            deadline_exceeded: count(&s.deadline_exceeded),
            unauthenticated: count(&s.unauthenticated),
            permission_denied: count(&s.permission_denied),
            faults_delayed: count(&s.faults_delayed),
            faults_aborted: count(&s.faults_aborted),
        };
        let upstreams = self
            .upstream_names()
            .into_iter()
            .map(|name| pb::UpstreamStats {
                counters: Some(client_counters(&self.stats.upstream(&name).counters)),
                upstream: name,
                methods: vec![],
            })
            .collect();
        Ok(Response::new(pb::GetStatsResponse {
            start_time: Some(self.start_time.into()),
            server: Some(server),
            upstreams,
            denials: s
                .denials()
                .into_iter()
                .map(|((method, caller, code), n)| pb::AuthorizationDenial {
                    method,
                    caller,
                    code,
                    count: i64::try_from(n).unwrap_or(i64::MAX),
                })
                .collect(),
        }))
    }
}
