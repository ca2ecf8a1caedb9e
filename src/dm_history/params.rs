//! TEMPORARY stub, replaced by the real module.
use crate::config::ParamsConfig;
use crate::dm_history::errors::ApiError;
pub struct RawQuery {
    pairs: Vec<(String, String)>,
}
impl RawQuery {
    pub fn parse(raw: Option<&str>) -> Result<RawQuery, ApiError> {
        let _ = raw;
        Ok(RawQuery { pairs: vec![] })
    }
    pub fn access_token(&self) -> Result<Option<&str>, ApiError> {
        Ok(self.pairs.first().map(|p| p.1.as_str()))
    }
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalQuery {
    pub room_id: String,
    pub offset: u64,
    pub count: u64,
    pub sort: Option<String>,
    pub query: Option<String>,
    pub fields: Option<String>,
    pub access_token: Option<String>,
}
impl CanonicalQuery {
    pub fn from_raw(raw: &RawQuery, cfg: &ParamsConfig) -> Result<CanonicalQuery, ApiError> {
        let _ = (raw, cfg);
        Err(ApiError::room_id_missing())
    }
    pub fn to_query_string(&self) -> String {
        String::new()
    }
    pub fn cache_key(&self) -> String {
        String::new()
    }
}
pub fn encode_component(s: &str) -> String {
    s.to_owned()
}
