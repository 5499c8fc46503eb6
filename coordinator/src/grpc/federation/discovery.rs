//! Discovery across regions: a listing of public rooms is this group's page merged with one
//! page from each other region's group, asked of one of its gateways at once, all within
//! [`DISCOVERY_REGION_TIMEOUT`]. A region that does not answer in time is left out and named,
//! so a listing is never held up by a region cut off from this one.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::super::convert;
use super::super::proto;
use super::{Call, Federation};
use crate::metrics;
use crate::registry::{ListingPage, ListingQuery, Region, merge_pages};

/// How long the other regions' groups have to answer a listing: short, since a listing is
/// interactive and a partial answer (which says what is missing) beats a slow one.
pub const DISCOVERY_REGION_TIMEOUT: Duration = Duration::from_millis(750);

/// A listing of public rooms and the regions missing from it.
#[derive(Debug, Default)]
pub struct Discovered {
    pub page: ListingPage,
    pub unreachable: Vec<Region>,
}

impl Federation {
    /// The public rooms matching `query` of this group and, unless `here_only` (a request
    /// passed on by another region, which asks the others itself), of every other region's.
    pub async fn discover(self: &Arc<Self>, query: &ListingQuery, here_only: bool) -> Discovered {
        let local = self.replica.public_rooms(query);
        if here_only {
            metrics::discovery_request("region");
            return Discovered {
                page: local,
                unreachable: Vec::new(),
            };
        }
        let mut asked = JoinSet::new();
        // Every region asked is either answered or named unreachable.
        let mut unanswered = BTreeSet::new();
        for (region, gateways) in self.replica.regions() {
            if region.as_str() == self.replica.region() || gateways.is_empty() {
                continue;
            }
            unanswered.insert(region.clone());
            let this = Arc::clone(self);
            let request = convert::listing_query_to_proto(query);
            asked.spawn(async move {
                let call: Call<proto::DiscoverRoomsRequest, proto::DiscoverRoomsResponse> =
                    |mut c, r| Box::pin(async move { c.discover_rooms(r).await });
                let answer = this
                    .call_within(
                        &region,
                        &gateways,
                        request,
                        "discover_rooms",
                        call,
                        DISCOVERY_REGION_TIMEOUT,
                    )
                    .await;
                let page = match answer {
                    Ok(response) => convert::listing_page_from_proto(response.get_ref())
                        .map(|(page, _)| page)
                        .map_err(|e| e.to_string()),
                    Err(status) => Err(status.message().to_owned()),
                };
                (region, page)
            });
        }
        let mut pages = vec![local];
        // Every task ends within the deadline (`call_within`); the loop ends with the set.
        while let Some(joined) = asked.join_next().await {
            match joined {
                Ok((region, Ok(page))) => {
                    unanswered.remove(&region);
                    pages.push(page);
                }
                Ok((region, Err(reason))) => {
                    tracing::debug!(%region, %reason, "a region's public rooms are missing from a listing");
                }
                Err(e) => tracing::warn!(error = %e, "a discovery request task failed"),
            }
        }
        let unreachable: Vec<Region> = unanswered.into_iter().collect();
        metrics::discovery_request(if unreachable.is_empty() {
            "complete"
        } else {
            "partial"
        });
        Discovered {
            page: merge_pages(pages, query.limit),
            unreachable,
        }
    }
}
