//! Derived quantities: differences, products and ratios of column pairs, and expressions the
//! caller names.
//!
//! Expression syntax (`--derive NAME=EXPR`): numbers, column names and `+ - * /` with the usual
//! precedence and parentheses. A column name is written in double quotes (`"Torque [Nm]"`) or,
//! when it is a plain word (letters, digits, `_`), bare. Example:
//! `power="Torque [Nm]"*"Rotational speed [rpm]"*0.10472`.

use super::RootCauseError;
use super::table::{ColumnValues, Table};

/// A parsed expression over a table's columns.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A constant.
    Number(f64),
    /// A column, by its index in the table.
    Column(usize),
    /// A binary operation.
    Binary(Box<Expr>, Op, Box<Expr>),
}

/// An arithmetic operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
}

/// A derived feature: its name, unit, what it computes and how it was proposed.
#[derive(Debug, Clone)]
pub struct Derived {
    /// The name findings use ("Process temperature [K] − Air temperature [K]").
    pub name: String,
    /// The unit when one follows from the inputs.
    pub unit: Option<String>,
    /// What it computes.
    pub expr: Expr,
    /// The columns it reads (raw findings on them may restate it).
    pub parents: Vec<usize>,
    /// Whether the caller named it (kept even when it does not beat its parents).
    pub explicit: bool,
}

impl Expr {
    /// Parses `text` against `table`'s column names.
    pub fn parse(text: &str, table: &Table) -> Result<Self, RootCauseError> {
        let mut parser = Parser {
            text,
            chars: text.char_indices().peekable(),
            table,
        };
        let expr = parser.sum()?;
        parser.skip_space();
        if let Some((at, c)) = parser.chars.next() {
            return Err(parser.error(format!("unexpected {c:?} at {at}")));
        }
        Ok(expr)
    }

    /// The value for every row (`NaN` where an input is missing or a division is by zero).
    pub fn evaluate(&self, table: &Table) -> Vec<f64> {
        match self {
            Expr::Number(value) => vec![*value; table.rows],
            Expr::Column(index) => match &table.columns[*index].values {
                ColumnValues::Numeric(values) => values.clone(),
                ColumnValues::Categorical { .. } => vec![f64::NAN; table.rows],
            },
            Expr::Binary(left, op, right) => {
                let mut values = left.evaluate(table);
                let right = right.evaluate(table);
                for (value, right) in values.iter_mut().zip(right) {
                    *value = match op {
                        Op::Add => *value + right,
                        Op::Sub => *value - right,
                        Op::Mul => *value * right,
                        Op::Div if right == 0.0 => f64::NAN,
                        Op::Div => *value / right,
                    };
                }
                values
            }
        }
    }

    /// The columns the expression reads.
    pub fn columns(&self) -> Vec<usize> {
        let mut columns = Vec::new();
        self.collect_columns(&mut columns);
        columns.sort_unstable();
        columns.dedup();
        columns
    }

    fn collect_columns(&self, columns: &mut Vec<usize>) {
        match self {
            Expr::Number(_) => {}
            Expr::Column(index) => columns.push(*index),
            Expr::Binary(left, _, right) => {
                left.collect_columns(columns);
                right.collect_columns(columns);
            }
        }
    }
}

/// A `NAME=EXPR` definition parsed against `table`.
pub fn parse_definition(definition: &str, table: &Table) -> Result<Derived, RootCauseError> {
    let Some((name, text)) = definition.split_once('=') else {
        return Err(RootCauseError::Expression {
            expression: definition.to_string(),
            message: "expected NAME=EXPR".to_string(),
        });
    };
    let expr = Expr::parse(text.trim(), table)?;
    let parents = expr.columns();
    if parents.is_empty() {
        return Err(RootCauseError::Expression {
            expression: definition.to_string(),
            message: "names no column".to_string(),
        });
    }
    let name = name.trim();
    Ok(Derived {
        name: name.to_string(),
        unit: super::table::unit_in_name(name),
        expr,
        parents,
        explicit: true,
    })
}

/// The pair quantities tried for columns `a` and `b` (numeric): `a − b` when their units
/// agree (or both are unknown), `a × b` and `a / b` always. A product of a torque in Nm and a
/// speed in rpm is given in watts (× 2π/60), so its thresholds read as power.
pub fn pair_candidates(table: &Table, a: usize, b: usize) -> Vec<Derived> {
    // The larger column comes first, so a difference reads the way an engineer writes it
    // (process − air temperature, not air − process).
    let mean = |index: usize| match &table.columns[index].values {
        ColumnValues::Numeric(values) => {
            let present = values.iter().filter(|v| !v.is_nan());
            present.clone().sum::<f64>() / present.count().max(1) as f64
        }
        ColumnValues::Categorical { .. } => 0.0,
    };
    let (a, b) = if mean(b) > mean(a) { (b, a) } else { (a, b) };
    let (column_a, column_b) = (&table.columns[a], &table.columns[b]);
    let (name_a, name_b) = (&column_a.name, &column_b.name);
    let column = |index| Box::new(Expr::Column(index));
    let mut candidates = Vec::new();
    if column_a.unit == column_b.unit {
        candidates.push(Derived {
            name: format!("{name_a} − {name_b}"),
            unit: column_a.unit.clone(),
            expr: Expr::Binary(column(a), Op::Sub, column(b)),
            parents: vec![a, b],
            explicit: false,
        });
    }
    let units = (column_a.unit.as_deref(), column_b.unit.as_deref());
    let power = matches!(units, (Some("Nm"), Some("rpm")) | (Some("rpm"), Some("Nm")));
    let product = Expr::Binary(column(a), Op::Mul, column(b));
    candidates.push(if power {
        Derived {
            name: format!("power = {name_a} × {name_b} × 2π/60"),
            unit: Some("W".to_string()),
            expr: Expr::Binary(
                Box::new(product),
                Op::Mul,
                Box::new(Expr::Number(std::f64::consts::PI / 30.0)),
            ),
            parents: vec![a, b],
            explicit: false,
        }
    } else {
        Derived {
            name: format!("{name_a} × {name_b}"),
            unit: match units {
                (Some(unit_a), Some(unit_b)) => Some(format!("{unit_b}{unit_a}")),
                _ => None,
            },
            expr: product,
            parents: vec![a, b],
            explicit: false,
        }
    });
    candidates.push(Derived {
        name: format!("{name_a} / {name_b}"),
        unit: match units {
            (Some(unit_a), Some(unit_b)) if unit_a != unit_b => Some(format!("{unit_a}/{unit_b}")),
            _ => None,
        },
        expr: Expr::Binary(column(a), Op::Div, column(b)),
        parents: vec![a, b],
        explicit: false,
    });
    candidates
}

struct Parser<'a> {
    text: &'a str,
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    table: &'a Table,
}

impl Parser<'_> {
    fn error(&self, message: String) -> RootCauseError {
        RootCauseError::Expression {
            expression: self.text.to_string(),
            message,
        }
    }

    fn skip_space(&mut self) {
        while self.chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            self.chars.next();
        }
    }

    fn sum(&mut self) -> Result<Expr, RootCauseError> {
        let mut expr = self.product()?;
        loop {
            self.skip_space();
            let op = match self.chars.peek() {
                Some((_, '+')) => Op::Add,
                Some((_, '-')) => Op::Sub,
                _ => return Ok(expr),
            };
            self.chars.next();
            expr = Expr::Binary(Box::new(expr), op, Box::new(self.product()?));
        }
    }

    fn product(&mut self) -> Result<Expr, RootCauseError> {
        let mut expr = self.operand()?;
        loop {
            self.skip_space();
            let op = match self.chars.peek() {
                Some((_, '*')) => Op::Mul,
                Some((_, '/')) => Op::Div,
                _ => return Ok(expr),
            };
            self.chars.next();
            expr = Expr::Binary(Box::new(expr), op, Box::new(self.operand()?));
        }
    }

    fn operand(&mut self) -> Result<Expr, RootCauseError> {
        self.skip_space();
        let Some(&(start, first)) = self.chars.peek() else {
            return Err(self.error("expression ends early".to_string()));
        };
        if first == '(' {
            self.chars.next();
            let expr = self.sum()?;
            self.skip_space();
            return match self.chars.next() {
                Some((_, ')')) => Ok(expr),
                _ => Err(self.error("missing )".to_string())),
            };
        }
        if first == '-' {
            self.chars.next();
            let operand = self.operand()?;
            return Ok(Expr::Binary(
                Box::new(Expr::Number(-1.0)),
                Op::Mul,
                Box::new(operand),
            ));
        }
        let name = if first == '"' {
            self.chars.next();
            let mut name = String::new();
            loop {
                match self.chars.next() {
                    Some((_, '"')) => break,
                    Some((_, c)) => name.push(c),
                    None => return Err(self.error("unclosed \"".to_string())),
                }
            }
            name
        } else if first.is_ascii_digit() || first == '.' {
            let mut end = start;
            while let Some(&(at, c)) = self.chars.peek() {
                let exponent_sign =
                    (c == '-' || c == '+') && self.text[start..at].ends_with(['e', 'E']);
                if c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E' || exponent_sign {
                    end = at + c.len_utf8();
                    self.chars.next();
                } else {
                    break;
                }
            }
            let literal = &self.text[start..end];
            return literal
                .parse()
                .map(Expr::Number)
                .map_err(|_| self.error(format!("bad number {literal:?}")));
        } else if first.is_alphanumeric() || first == '_' {
            let mut name = String::new();
            while let Some(&(_, c)) = self.chars.peek() {
                if c.is_alphanumeric() || c == '_' {
                    name.push(c);
                    self.chars.next();
                } else {
                    break;
                }
            }
            name
        } else {
            return Err(self.error(format!("unexpected {first:?} at {start}")));
        };
        let index = self
            .table
            .columns
            .iter()
            .position(|column| column.name == name)
            .ok_or_else(|| self.error(format!("no column {name:?}")))?;
        if !matches!(self.table.columns[index].values, ColumnValues::Numeric(_)) {
            return Err(self.error(format!("column {name:?} is not numeric")));
        }
        Ok(Expr::Column(index))
    }
}

#[cfg(test)]
mod tests {
    use super::super::table::Column;
    use super::*;

    fn table() -> Table {
        Table {
            rows: 2,
            columns: vec![
                Column::numeric("Torque [Nm]", vec![40.0, 50.0]),
                Column::numeric("speed", vec![1500.0, 0.0]),
            ],
        }
    }

    #[test]
    fn expressions_follow_precedence_and_quotes() {
        let table = table();
        let derived = parse_definition("p=\"Torque [Nm]\"*speed*0.5 - 1", &table).expect("parses");
        assert_eq!(derived.expr.evaluate(&table), vec![29_999.0, -1.0]);
        assert_eq!(derived.parents, vec![0, 1]);
        let ratio = Expr::parse("(\"Torque [Nm]\" + 10) / speed", &table).expect("parses");
        let values = ratio.evaluate(&table);
        assert!((values[0] - 50.0 / 1500.0).abs() < 1e-12);
        assert!(values[1].is_nan(), "division by zero is missing");
        assert!(
            (Expr::parse("2e-1*speed", &table)
                .expect("parses")
                .evaluate(&table)[0]
                - 300.0)
                .abs()
                < 1e-9
        );
    }

    #[test]
    fn bad_expressions_are_named() {
        let table = table();
        for (text, fragment) in [
            ("p=\"Torque\"*speed", "no column \"Torque\""),
            ("p=speed*", "ends early"),
            ("p=(speed", "missing )"),
            ("speed*2", "NAME=EXPR"),
            ("p=3", "names no column"),
        ] {
            let error = parse_definition(text, &table).expect_err(text).to_string();
            assert!(error.contains(fragment), "{text}: {error}");
        }
    }
}
