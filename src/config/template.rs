//! `{placeholder}` templates in deploy.toml values (commands, URLs, bodies).
//!
//! Templates are parsed when the file is loaded, so an unknown placeholder is
//! a configuration error naming the key, not a surprise mid-deploy. Values
//! substituted into shell commands go through `shell::quote`; do not put
//! quotes around a placeholder yourself.
//!
//! Syntax: `{name}` is a placeholder; `{{` and `}}` are literal braces; `${…}`
//! (shell parameter expansion) and braces around anything that is not a bare
//! lower-case word (`{}`, `{a,b}`, `{ print $1 }`) are left alone.

use std::fmt;

use crate::shell;

/// The values a template can refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Var {
    App,
    Name,
    Address,
    Port,
    User,
    Stage,
    DeployTo,
    Release,
    /// The revision of the release (its REVISION file, a git sha).
    Revision,
}

impl Var {
    pub const ALL: [Var; 9] = [
        Var::App,
        Var::Name,
        Var::Address,
        Var::Port,
        Var::User,
        Var::Stage,
        Var::DeployTo,
        Var::Release,
        Var::Revision,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Var::App => "app",
            Var::Name => "name",
            Var::Address => "address",
            Var::Port => "port",
            Var::User => "user",
            Var::Stage => "stage",
            Var::DeployTo => "deploy_to",
            Var::Release => "release",
            Var::Revision => "revision",
        }
    }

    fn from_key(key: &str) -> Option<Var> {
        Var::ALL.into_iter().find(|v| v.key() == key)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

/// Values for one host and run. Unknown values (a dry run does not know
/// the release yet, say) render as `{name}` so the output stays honest.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    pub app: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub stage: String,
    pub deploy_to: String,
    pub release: String,
    /// The revision of `release`: what the run ships, or what the host's
    /// REVISION file says for a release it goes back to.
    pub revision: String,
}

impl Vars {
    fn get(&self, var: Var) -> String {
        match var {
            Var::App => self.app.clone(),
            Var::Name => self.name.clone(),
            Var::Address => self.address.clone(),
            Var::Port => self.port.to_string(),
            Var::User => self.user.clone(),
            Var::Stage => self.stage.clone(),
            Var::DeployTo => self.deploy_to.clone(),
            Var::Release => self.release.clone(),
            Var::Revision => self.revision.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub placeholder: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let allowed: Vec<String> = Var::ALL
            .iter()
            .map(|v| format!("{{{}}}", v.key()))
            .collect();
        write!(
            f,
            "unknown placeholder {{{}}}; allowed: {} (write {{{{ and }}}} for literal braces)",
            self.placeholder,
            allowed.join(", ")
        )
    }
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let chars: Vec<char> = source.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            match c {
                '{' if chars.get(i + 1) == Some(&'{') => {
                    text.push('{');
                    i += 2;
                }
                '}' if chars.get(i + 1) == Some(&'}') => {
                    text.push('}');
                    i += 2;
                }
                '$' if chars.get(i + 1) == Some(&'{') => {
                    // Shell parameter expansion: copy through its closing brace.
                    let end = chars[i..]
                        .iter()
                        .position(|&c| c == '}')
                        .map_or(chars.len(), |p| i + p + 1);
                    text.extend(&chars[i..end]);
                    i = end;
                }
                '{' => {
                    let word: String = chars[i + 1..]
                        .iter()
                        .take_while(|c| c.is_ascii_lowercase() || **c == '_')
                        .collect();
                    let close = i + 1 + word.chars().count();
                    if !word.is_empty() && chars.get(close) == Some(&'}') {
                        let var =
                            Var::from_key(&word).ok_or(TemplateError { placeholder: word })?;
                        if !text.is_empty() {
                            pieces.push(Piece::Text(std::mem::take(&mut text)));
                        }
                        pieces.push(Piece::Var(var));
                        i = close + 1;
                    } else {
                        text.push('{');
                        i += 1;
                    }
                }
                _ => {
                    text.push(c);
                    i += 1;
                }
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template {
            source: source.to_string(),
            pieces,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn uses(&self, var: Var) -> bool {
        self.pieces.contains(&Piece::Var(var))
    }

    /// For URLs and expected bodies: values inserted as they are.
    pub fn render_plain(&self, vars: &Vars) -> String {
        self.render(vars, |v| v)
    }

    /// For shell command lines: every value quoted as one word.
    pub fn render_shell(&self, vars: &Vars) -> String {
        self.render(vars, |v| shell::quote(&v).into_owned())
    }

    fn render(&self, vars: &Vars, value: impl Fn(String) -> String) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Var(var) => out.push_str(&value(vars.get(*var))),
            }
        }
        out
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars {
            app: "shop".into(),
            name: "web1".into(),
            address: "10.0.0.11".into(),
            port: 22,
            user: "deploy".into(),
            stage: "production".into(),
            deploy_to: "/srv/my shop".into(),
            release: "20261122101500".into(),
            revision: "3f2a9c1".into(),
        }
    }

    #[test]
    fn substitutes_and_quotes_for_the_shell() {
        let t = Template::parse("restart {deploy_to} --host={name}").unwrap();
        assert_eq!(
            t.render_shell(&vars()),
            "restart '/srv/my shop' --host=web1"
        );
        assert_eq!(t.render_plain(&vars()), "restart /srv/my shop --host=web1");
    }

    #[test]
    fn leaves_shell_braces_alone() {
        let src = "echo ${HOME} {} {a,b} '{ print $1 }' {{name}} x}}";
        let t = Template::parse(src).unwrap();
        assert_eq!(
            t.render_shell(&vars()),
            "echo ${HOME} {} {a,b} '{ print $1 }' {name} x}"
        );
    }

    #[test]
    fn rejects_unknown_placeholders() {
        let err = Template::parse("http://{adress}:8080/").unwrap_err();
        assert_eq!(err.placeholder, "adress");
        assert!(
            err.to_string()
                .contains("allowed: {app}, {name}, {address}")
        );
    }

    #[test]
    fn knows_what_it_uses() {
        let t = Template::parse("http://{address}:8080/health").unwrap();
        assert!(t.uses(Var::Address));
        assert!(!t.uses(Var::Release));
    }
}
