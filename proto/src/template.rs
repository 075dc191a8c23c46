//! Client-id and topic templates: `sensors/{group}/{i}`.
//!
//! Placeholders: `{group}` (group name), `{i}` (client index within the group, from 0),
//! `{agent}` (agent index), `{run}` (the run tag in hex: unique per run). `{{` and `}}` are literal
//! braces. A template is parsed once, when the scenario loads; rendering is per client.

use std::fmt::Write;

/// What a placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    Group,
    Index,
    Agent,
    Run,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(Var),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Values for rendering one client's template.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    pub group: &'a str,
    pub index: u32,
    pub agent: u32,
    pub run_tag: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown placeholder `{{{0}}}`; known are {{group}}, {{i}}, {{agent}}, {{run}}")]
    Unknown(String),
    #[error("unclosed `{{`; write `{{{{` for a literal brace")]
    Unclosed,
    #[error("stray `}}`; write `}}}}` for a literal brace")]
    Stray,
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => return Err(TemplateError::Stray),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(TemplateError::Unclosed),
                        }
                    }
                    let var = match name.as_str() {
                        "group" => Var::Group,
                        "i" => Var::Index,
                        "agent" => Var::Agent,
                        "run" => Var::Run,
                        _ => return Err(TemplateError::Unknown(name)),
                    };
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Var(var));
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template { parts })
    }

    /// Whether the template mentions `var`.
    pub fn uses(&self, var: Var) -> bool {
        self.parts.iter().any(|p| *p == Part::Var(var))
    }

    /// Renders the template for one client.
    pub fn render(&self, vars: &Vars<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Var(Var::Group) => out.push_str(vars.group),
                Part::Var(Var::Index) => write!(out, "{}", vars.index).unwrap(),
                Part::Var(Var::Agent) => write!(out, "{}", vars.agent).unwrap(),
                Part::Var(Var::Run) => write!(out, "{:08x}", vars.run_tag).unwrap(),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars<'static> {
        Vars { group: "sensors", index: 42, agent: 1, run_tag: 0xabc }
    }

    #[test]
    fn renders_placeholders_and_escapes() {
        let t = Template::parse("{group}/{i}/a{agent}/{run}/{{x}}").unwrap();
        assert_eq!(t.render(&vars()), "sensors/42/a1/00000abc/{x}");
        assert!(t.uses(Var::Index));
        assert!(!Template::parse("plain").unwrap().uses(Var::Index));
    }

    #[test]
    fn rejects_bad_templates() {
        assert_eq!(Template::parse("a/{id}"), Err(TemplateError::Unknown("id".into())));
        assert_eq!(Template::parse("a/{i"), Err(TemplateError::Unclosed));
        assert_eq!(Template::parse("a/}"), Err(TemplateError::Stray));
    }
}
